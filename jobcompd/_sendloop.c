/* The compiled twin of jobcompd/sendloop.py: the send side's work per record.
 *
 * jobcompd/sendloop.py holds the Python twin, the reference; this file does what it does, step for
 * step, without the interpreter's work per record:
 *
 *   - produce_records(): the loop of every record sent -- records from the end of the backlog to
 *     confluent-kafka's produce() (called with the same arguments in the same order), each then
 *     entered in flight;
 *   - Reports: the delivery reports as confluent-kafka serves them (its on_delivery callback);
 *   - delivered_pairs() and forget(): reports that all say delivered, of records all in flight,
 *     made into what the state settles, then taken out of flight.
 *
 * tests/test_sendloop.py runs both twins on the same inputs and compares what they do.
 *
 * A record is a SpooledRecord (a tuple: seq, rid, jobid, payload, ...); an in-flight entry is a
 * tuple (seq, jobid, payload size). In produce_records() every exception on the way -- produce()
 * refusing a record, memory -- ends the loop and is returned, not raised, with the record it
 * concerns left at the end of the backlog: the caller counts what was handed over first.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

/* ---------------------------------------------------------------- the loop of every record sent */

/* The exception set, taken as a value (with its traceback); the error indicator is cleared. */
static PyObject *take_exception(void) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value == NULL) { /* cannot happen after a failed call; never return NULL as "no error" */
        value = Py_NewRef(PyExc_SystemError);
    } else if (traceback != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
}

/* Hand one record to produce() and enter it in in_flight: 0, or -1 with an exception set. */
static int produce_one(PyObject *produce, PyObject *topic, PyObject *partition, PyObject *zero,
                       PyObject *record, PyObject *in_flight, PyObject *header, Py_ssize_t *bytes) {
    if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) < 4) {
        PyErr_SetString(PyExc_TypeError, "a backlog record is not a SpooledRecord");
        return -1;
    }
    PyObject *seq = PyTuple_GET_ITEM(record, 0), *rid = PyTuple_GET_ITEM(record, 1);
    PyObject *jobid = PyTuple_GET_ITEM(record, 2), *payload = PyTuple_GET_ITEM(record, 3);
    PyObject *pair = PyTuple_Pack(2, header, rid);
    PyObject *headers = pair == NULL ? NULL : PyList_New(1);
    if (headers == NULL) {
        Py_XDECREF(pair);
        return -1;
    }
    PyList_SET_ITEM(headers, 0, pair); /* steals pair */
    /* produce(topic, value, key, partition, callback, on_delivery, timestamp, headers) */
    PyObject *args[8] = {topic, payload, rid, partition, Py_None, Py_None, zero, headers};
    PyObject *result = PyObject_Vectorcall(produce, args, 8, NULL);
    Py_DECREF(headers);
    if (result == NULL) return -1;
    Py_DECREF(result);
    Py_ssize_t size = PyObject_Length(payload);
    if (size < 0) return -1;
    PyObject *length = PyLong_FromSsize_t(size);
    PyObject *entry = length == NULL ? NULL : PyTuple_Pack(3, seq, jobid, length);
    Py_XDECREF(length);
    if (entry == NULL) return -1;
    int failed = PyDict_SetItem(in_flight, rid, entry);
    Py_DECREF(entry);
    if (failed) return -1;
    *bytes = size;
    return 0;
}

static PyObject *produce_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "produce_records(produce, topic, partition, backlog, end, budget, in_flight, header)");
        return NULL;
    }
    PyObject *produce = args[0], *topic = args[1], *partition = args[2], *backlog = args[3];
    PyObject *in_flight = args[6], *header = args[7];
    Py_ssize_t end = PyLong_AsSsize_t(args[4]);
    if (end == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t budget = PyLong_AsSsize_t(args[5]);
    if (budget == -1 && PyErr_Occurred()) return NULL;
    if (!PyList_Check(backlog) || !PyDict_Check(in_flight)) {
        PyErr_SetString(PyExc_TypeError, "produce_records() takes the backlog as a list and in_flight as a dict");
        return NULL;
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) return NULL;
    Py_ssize_t sent = 0, size = 0;
    PyObject *error = NULL;
    while (PyList_GET_SIZE(backlog) > end && size < budget) {
        Py_ssize_t last = PyList_GET_SIZE(backlog) - 1;
        PyObject *record = Py_NewRef(PyList_GET_ITEM(backlog, last)); /* its own, while produce() runs */
        Py_ssize_t bytes = 0;
        int failed = produce_one(produce, topic, partition, zero, record, in_flight, header, &bytes) < 0;
        if (!failed) {
            size += bytes;
            sent++;
            /* The record handed over leaves the backlog (the last item: nothing moves) -- if it is
             * still there: produce() calls back no Python code that could change the backlog. */
            if (PyList_GET_SIZE(backlog) != last + 1 || PyList_GET_ITEM(backlog, last) != record) {
                PyErr_SetString(PyExc_RuntimeError, "the backlog changed while a record was produced");
                failed = 1;
            } else {
                failed = PyList_SetSlice(backlog, last, last + 1, NULL) < 0;
            }
        }
        Py_DECREF(record);
        if (failed) {
            error = take_exception();
            break;
        }
    }
    Py_DECREF(zero);
    return Py_BuildValue("(nnN)", sent, size, error != NULL ? error : Py_NewRef(Py_None));
}

/* ---------------------------------------------------------------- delivery reports */

typedef struct {
    PyObject_HEAD
    PyObject *delivered; /* list: the key of each report that says delivered */
    PyObject *failed;    /* list: (error, message) of each other report */
    double since;        /* time.monotonic() when the first report of the lists came */
} Reports;

static PyObject *key_method; /* "key", interned */

/* time.monotonic(): CLOCK_MONOTONIC, as Python reads it on Linux. */
static double monotonic(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

static int Reports_init(Reports *self, PyObject *args, PyObject *kwds) {
    if (!PyArg_ParseTuple(args, ":Reports") || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "Reports() takes no arguments");
        return -1;
    }
    PyObject *delivered = PyList_New(0), *failed = PyList_New(0);
    if (delivered == NULL || failed == NULL) {
        Py_XDECREF(delivered);
        Py_XDECREF(failed);
        return -1;
    }
    Py_XSETREF(self->delivered, delivered);
    Py_XSETREF(self->failed, failed);
    self->since = 0.0;
    return 0;
}

/* reports(error, message): one delivery report, as confluent-kafka's on_delivery. */
static PyObject *Reports_call(Reports *self, PyObject *args, PyObject *kwds) {
    PyObject *error, *message;
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) || !PyArg_UnpackTuple(args, "Reports", 2, 2, &error, &message)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a report is (error, message)");
        return NULL;
    }
    if (self->delivered == NULL || self->failed == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Reports() not initialized");
        return NULL;
    }
    if (PyList_GET_SIZE(self->delivered) == 0 && PyList_GET_SIZE(self->failed) == 0) self->since = monotonic();
    PyObject *item = error == Py_None ? PyObject_CallMethodNoArgs(message, key_method) : PyTuple_Pack(2, error, message);
    if (item == NULL) return NULL;
    int failed = PyList_Append(error == Py_None ? self->delivered : self->failed, item);
    Py_DECREF(item);
    if (failed) return NULL;
    Py_RETURN_NONE;
}

/* A list, or AttributeError when there is none (a Reports made without __init__). */
static PyObject *get_list(PyObject *list, const char *name) {
    if (list == NULL) {
        PyErr_Format(PyExc_AttributeError, "Reports.%s is not set (Reports() not initialized)", name);
        return NULL;
    }
    return Py_NewRef(list);
}

static PyObject *Reports_get_delivered(Reports *self, void *closure) {
    (void)closure;
    return get_list(self->delivered, "delivered");
}

static PyObject *Reports_get_failed(Reports *self, void *closure) {
    (void)closure;
    return get_list(self->failed, "failed");
}

/* Each list may be replaced, by another list only (the calls above rely on it). */
static int set_list(PyObject **slot, PyObject *value, const char *name) {
    if (value == NULL || !PyList_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "Reports.%s is a list", name);
        return -1;
    }
    Py_SETREF(*slot, Py_NewRef(value));
    return 0;
}

static int Reports_set_delivered(Reports *self, PyObject *value, void *closure) {
    (void)closure;
    return set_list(&self->delivered, value, "delivered");
}

static int Reports_set_failed(Reports *self, PyObject *value, void *closure) {
    (void)closure;
    return set_list(&self->failed, value, "failed");
}

static PyObject *Reports_get_since(Reports *self, void *closure) {
    (void)closure;
    return PyFloat_FromDouble(self->since);
}

static int Reports_set_since(Reports *self, PyObject *value, void *closure) {
    (void)closure;
    double since = value == NULL ? -1.0 : PyFloat_AsDouble(value);
    if (since == -1.0 && (value == NULL || PyErr_Occurred())) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "Reports.since is a number");
        return -1;
    }
    self->since = since;
    return 0;
}

static PyGetSetDef Reports_getset[] = {
    {"delivered", (getter)Reports_get_delivered, (setter)Reports_set_delivered,
     "The key of each report served that says delivered.", NULL},
    {"failed", (getter)Reports_get_failed, (setter)Reports_set_failed,
     "(error, message) of each other report served.", NULL},
    {"since", (getter)Reports_get_since, (setter)Reports_set_since,
     "time.monotonic() when the first report of the lists came.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static int Reports_traverse(Reports *self, visitproc visit, void *arg) {
    Py_VISIT(self->delivered);
    Py_VISIT(self->failed);
    return 0;
}

static int Reports_clear(Reports *self) {
    Py_CLEAR(self->delivered);
    Py_CLEAR(self->failed);
    return 0;
}

static void Reports_dealloc(Reports *self) {
    PyObject_GC_UnTrack(self);
    Reports_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ReportsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "jobcompd._sendloop.Reports",
    .tp_basicsize = sizeof(Reports),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Reports(): delivery reports as confluent-kafka serves them (its on_delivery callback).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reports_init,
    .tp_call = (ternaryfunc)Reports_call,
    .tp_traverse = (traverseproc)Reports_traverse,
    .tp_clear = (inquiry)Reports_clear,
    .tp_dealloc = (destructor)Reports_dealloc,
    .tp_getset = Reports_getset,
};

/* ---------------------------------------------------------------- settling */

/* delivered_pairs(keys, in_flight, early) -> ((seq, jobid) pairs, record ids), or None when a key
 * is not bytes, or its record is not in flight, or was sent early (in ``early``). */
static PyObject *delivered_pairs(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3 || !PyList_Check(args[0]) || !PyDict_Check(args[1]) || !PyAnySet_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "delivered_pairs(keys: list, in_flight: dict, early: set)");
        return NULL;
    }
    PyObject *keys = args[0], *in_flight = args[1], *early = args[2];
    Py_ssize_t n = PyList_GET_SIZE(keys);
    int check_early = PySet_GET_SIZE(early) > 0;
    PyObject *pairs = PyList_New(n), *rids = PyList_New(n);
    if (pairs == NULL || rids == NULL) goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        if (!PyBytes_Check(key)) goto not_usual; /* a report without a key: not one of ours */
        PyObject *rid = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), NULL);
        if (rid == NULL) goto error;
        PyList_SET_ITEM(rids, i, rid); /* steals rid */
        if (check_early) {
            int sent_early = PySet_Contains(early, rid);
            if (sent_early < 0) goto error;
            if (sent_early) goto not_usual; /* waits for its batch's commit */
        }
        PyObject *entry = PyDict_GetItemWithError(in_flight, rid); /* borrowed */
        if (entry == NULL) {
            if (PyErr_Occurred()) goto error;
            goto not_usual;
        }
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
            PyErr_SetString(PyExc_TypeError, "an in-flight entry is not (seq, jobid, size)");
            goto error;
        }
        PyObject *pair = PyTuple_Pack(2, PyTuple_GET_ITEM(entry, 0), PyTuple_GET_ITEM(entry, 1));
        if (pair == NULL) goto error;
        PyList_SET_ITEM(pairs, i, pair); /* steals pair */
    }
    return Py_BuildValue("(NN)", pairs, rids);
not_usual:
    Py_DECREF(pairs);
    Py_DECREF(rids);
    Py_RETURN_NONE;
error:
    Py_XDECREF(pairs);
    Py_XDECREF(rids);
    return NULL;
}

/* forget(in_flight, rids) -> the payload bytes of the entries taken out of flight. */
static PyObject *forget(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyDict_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "forget(in_flight: dict, rids: list)");
        return NULL;
    }
    PyObject *in_flight = args[0], *rids = args[1];
    Py_ssize_t bytes = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(rids); i++) {
        PyObject *rid = PyList_GET_ITEM(rids, i);
        PyObject *entry = PyDict_GetItemWithError(in_flight, rid);
        if (entry == NULL) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, rid);
            return NULL;
        }
        Py_INCREF(entry);
        Py_ssize_t size = PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) == 3
                              ? PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 2))
                              : (PyErr_SetString(PyExc_TypeError, "an in-flight entry is not (seq, jobid, size)"), -1);
        Py_DECREF(entry);
        if (size == -1 && PyErr_Occurred()) return NULL;
        if (PyDict_DelItem(in_flight, rid) < 0) return NULL;
        bytes += size;
    }
    return PyLong_FromSsize_t(bytes);
}

/* ---------------------------------------------------------------- straight to librdkafka
 *
 * confluent-kafka's produce() holds the interpreter through librdkafka's whole call, and it serves
 * each delivery report as a Python Message carrying a copy of the payload. On two cores that is
 * what bounds the send side. A Channel takes both out of the interpreter, through librdkafka's
 * public interfaces:
 *
 *   - Channel.produce_records() hands records to rd_kafka_produceva() itself, without the
 *     interpreter lock. It uses the same topic, partition, key, value, header and copy flag that
 *     produce() is given, on the client instance of confluent-kafka's own Producer;
 *   - librdkafka tells an interceptor here how each of those records ended, and the interceptor
 *     keeps the record id (and, for a failure, the payload) until Channel.take() hands them over.
 *
 * This file is also a librdkafka plugin (its conf_init()), loaded through the producer's
 * `plugin.library.paths`. The plugin's property `jobcompd.channel` names the Channel, and its
 * on_new() interceptor is given the client instance as the Producer creates it. Records
 * produced here carry no per-message opaque, so confluent-kafka's report callback passes over
 * them; its own records carry one, so the interceptor here passes over those.
 *
 * The few librdkafka types used are declared below as its public ABI (rdkafka.h) lays them out;
 * its functions are looked up in the librdkafka that confluent-kafka loaded (dlsym), never linked. */

typedef struct rdk_client rdk_client;   /* rd_kafka_t */
typedef struct rdk_conf rdk_conf;       /* rd_kafka_conf_t */
typedef struct rdk_error rdk_error;     /* rd_kafka_error_t */

typedef struct { /* rd_kafka_message_t */
    int err;
    void *topic;
    int32_t partition;
    void *payload;
    size_t len;
    void *key;
    size_t key_len;
    int64_t offset;
    void *opaque; /* the per-message opaque given to produce */
} rdk_message;

typedef struct { /* rd_kafka_vu_t */
    int vtype;
    union {
        const char *cstr;
        int i;
        int32_t i32;
        struct { const void *ptr; size_t size; } mem;
        struct { const char *name; const void *val; ssize_t size; } header;
        void *ptr;
        char pad[64];
    } u;
} rdk_vu;

enum { VT_TOPIC = 1, VT_PARTITION = 3, VT_VALUE = 4, VT_KEY = 5, VT_OPAQUE = 6, VT_MSGFLAGS = 7, VT_HEADER = 9 };
enum { MSG_F_COPY = 0x2, CONF_UNKNOWN = -2, CONF_INVALID = -1, CONF_OK = 0, ERR_QUEUE_FULL = -184 };
static const char CHANNEL_PROPERTY[] = "jobcompd.channel";
static const char INTERCEPTOR[] = "jobcompd";

typedef int on_conf_set_f(rdk_conf *, const char *, const char *, char *, size_t, void *);
typedef int on_conf_dup_f(rdk_conf *, const rdk_conf *, size_t, const char **, void *);
typedef int on_conf_destroy_f(void *);
typedef int on_new_f(rdk_client *, const rdk_conf *, void *, char *, size_t);
typedef int on_acknowledgement_f(rdk_client *, rdk_message *, void *);
typedef int on_destroy_f(rdk_client *, void *);

static struct {
    int found; /* 1: every function below was found; -1: not (why says why) */
    char why[256];
    rdk_error *(*produceva)(rdk_client *, const rdk_vu *, size_t);
    int (*error_code)(const rdk_error *);
    int (*error_is_fatal)(const rdk_error *);
    const char *(*error_string)(const rdk_error *);
    void (*error_destroy)(rdk_error *);
    int (*add_on_conf_set)(rdk_conf *, const char *, on_conf_set_f *, void *);
    int (*add_on_conf_dup)(rdk_conf *, const char *, on_conf_dup_f *, void *);
    int (*add_on_conf_destroy)(rdk_conf *, const char *, on_conf_destroy_f *, void *);
    int (*add_on_new)(rdk_conf *, const char *, on_new_f *, void *);
    int (*add_on_acknowledgement)(rdk_client *, const char *, on_acknowledgement_f *, void *);
    int (*add_on_destroy)(rdk_client *, const char *, on_destroy_f *, void *);
} rdk;

/* The librdkafka loaded in this process: its path, if exactly one is (else why not). */
typedef struct { char path[1024]; int count; } loaded_t;

static int find_loaded(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    loaded_t *loaded = data;
    const char *name = info->dlpi_name, *base = name ? strrchr(name, '/') : NULL;
    base = base ? base + 1 : name;
    if (base != NULL && strncmp(base, "librdkafka", 10) == 0 && strcmp(loaded->path, name) != 0) {
        loaded->count++;
        snprintf(loaded->path, sizeof loaded->path, "%s", name);
    }
    return 0;
}

/* Look librdkafka's functions up (once); 1 if all were found. With the interpreter lock. */
static int rdk_find(void) {
    if (rdk.found) return rdk.found > 0;
    rdk.found = -1;
    loaded_t loaded = {{0}, 0};
    dl_iterate_phdr(find_loaded, &loaded);
    if (loaded.count != 1) {
        snprintf(rdk.why, sizeof rdk.why, "%d copies of librdkafka are loaded, not one", loaded.count);
        return 0;
    }
    void *lib = dlopen(loaded.path, RTLD_NOW | RTLD_NOLOAD); /* the one loaded: never another */
    if (lib == NULL) {
        snprintf(rdk.why, sizeof rdk.why, "cannot open %s: %s", loaded.path, dlerror());
        return 0;
    }
#define FIND(field, symbol)                                                                  \
    if ((*(void **)&rdk.field = dlsym(lib, symbol)) == NULL) {                               \
        snprintf(rdk.why, sizeof rdk.why, "%s has no %s", loaded.path, symbol);              \
        return 0;                                                                            \
    }
    FIND(produceva, "rd_kafka_produceva")
    FIND(error_code, "rd_kafka_error_code")
    FIND(error_is_fatal, "rd_kafka_error_is_fatal")
    FIND(error_string, "rd_kafka_error_string")
    FIND(error_destroy, "rd_kafka_error_destroy")
    FIND(add_on_conf_set, "rd_kafka_conf_interceptor_add_on_conf_set")
    FIND(add_on_conf_dup, "rd_kafka_conf_interceptor_add_on_conf_dup")
    FIND(add_on_conf_destroy, "rd_kafka_conf_interceptor_add_on_conf_destroy")
    FIND(add_on_new, "rd_kafka_conf_interceptor_add_on_new")
    FIND(add_on_acknowledgement, "rd_kafka_interceptor_add_on_acknowledgement")
    FIND(add_on_destroy, "rd_kafka_interceptor_add_on_destroy")
#undef FIND
    rdk.found = 1; /* (the library stays open: the handle is kept for good) */
    return 1;
}

/* -------- a channel: one client instance's records produced here, and how each ended */

typedef struct {
    size_t at;          /* where its key starts in the arena (a failure's payload follows it) */
    size_t key_len, payload_len;
    int err;
    int32_t partition;
    int64_t offset;
} ack_t;

typedef struct channel {
    pthread_mutex_t lock;
    long id;
    int refs;           /* the Channel object, and the client instance from on_new() to on_destroy() */
    rdk_client *client; /* set by on_new(), cleared by on_destroy() */
    ack_t *acks;
    size_t count, capacity;
    char *arena;
    size_t used, room;
    double first_at;    /* time.monotonic() of the first ack held */
    struct channel *next;
} channel_t;

/* The channel this thread is handing records to librdkafka for, while it does. librdkafka also
 * tells the interceptor of a record that rd_kafka_produceva() itself refuses (its partitioner
 * failed): that refusal is returned to the caller, and the record is not in flight, so the
 * interceptor passes over it -- were it kept, it could be taken for the report of the same record
 * produced again later. */
static _Thread_local channel_t *producing;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static channel_t *registry; /* every channel with its Channel object alive */
static long last_id;

static void channel_release(channel_t *c) {
    pthread_mutex_lock(&c->lock);
    int left = --c->refs;
    pthread_mutex_unlock(&c->lock);
    if (left) return;
    pthread_mutex_destroy(&c->lock);
    free(c->acks);
    free(c->arena);
    free(c);
}

/* The channel `id`, with a reference for the caller; NULL if there is none. */
static channel_t *channel_find(long id) {
    pthread_mutex_lock(&registry_lock);
    channel_t *c = registry;
    while (c != NULL && c->id != id) c = c->next;
    if (c != NULL) {
        pthread_mutex_lock(&c->lock);
        c->refs++;
        pthread_mutex_unlock(&c->lock);
    }
    pthread_mutex_unlock(&registry_lock);
    return c;
}

/* Room for `bytes` more in the arena and one more ack: 0, or -1 (no memory). Under c->lock. */
static int channel_reserve(channel_t *c, size_t bytes) {
    if (c->count == c->capacity) {
        size_t capacity = c->capacity ? 2 * c->capacity : 1024;
        ack_t *acks = realloc(c->acks, capacity * sizeof *acks);
        if (acks == NULL) return -1;
        c->acks = acks;
        c->capacity = capacity;
    }
    if (c->room - c->used < bytes) {
        size_t room = c->room ? c->room : 64 * 1024;
        while (room - c->used < bytes) room *= 2;
        char *arena = realloc(c->arena, room);
        if (arena == NULL) return -1;
        c->arena = arena;
        c->room = room;
    }
    return 0;
}

/* librdkafka's threads: a record ended (delivered, or failed for good). Ours carry no opaque. */
static int on_acknowledgement(rdk_client *client, rdk_message *m, void *opaque) {
    (void)client;
    channel_t *c = opaque;
    if (m->opaque != NULL) return 0; /* produced by confluent-kafka: its own report serves it */
    if (producing == c) return 0;    /* refused by rd_kafka_produceva() on this thread: returned */
    size_t key_len = m->key ? m->key_len : 0, payload_len = m->err && m->payload ? m->len : 0;
    pthread_mutex_lock(&c->lock);
    if (channel_reserve(c, key_len + payload_len) == 0) {
        if (c->count == 0) c->first_at = monotonic();
        ack_t *a = &c->acks[c->count++];
        a->at = c->used;
        a->key_len = key_len;
        a->payload_len = payload_len;
        a->err = m->err;
        a->partition = m->partition;
        a->offset = m->offset;
        if (key_len) memcpy(c->arena + c->used, m->key, key_len);
        if (payload_len) memcpy(c->arena + c->used + key_len, m->payload, payload_len);
        c->used += key_len + payload_len;
    }
    /* (Out of memory, the ack is lost: its record stays in flight and in the spool, and is sent
     * again at the next start -- never lost, at worst sent twice.) */
    pthread_mutex_unlock(&c->lock);
    return 0;
}

static int on_destroy(rdk_client *client, void *opaque) {
    (void)client;
    channel_t *c = opaque;
    pthread_mutex_lock(&c->lock);
    c->client = NULL;
    pthread_mutex_unlock(&c->lock);
    channel_release(c);
    return 0;
}

/* -------- the plugin: what each configuration that loads it says, and the client it makes */

typedef struct { long channel; } plugin_conf_t;

static int add_conf_interceptors(rdk_conf *conf, plugin_conf_t *state);

static int on_conf_set(rdk_conf *conf, const char *name, const char *value, char *errstr, size_t size,
                       void *opaque) {
    (void)conf;
    if (strcmp(name, CHANNEL_PROPERTY) != 0) return CONF_UNKNOWN;
    char *end = NULL;
    long id = value ? strtol(value, &end, 10) : 0;
    if (value == NULL || end == value || *end != '\0' || id <= 0) {
        snprintf(errstr, size, "%s must be a channel number", CHANNEL_PROPERTY);
        return CONF_INVALID;
    }
    ((plugin_conf_t *)opaque)->channel = id;
    return CONF_OK;
}

static int on_conf_dup(rdk_conf *conf, const rdk_conf *old, size_t filter_count, const char **filter,
                       void *opaque) {
    (void)old, (void)filter_count, (void)filter;
    plugin_conf_t *copy = malloc(sizeof *copy);
    if (copy == NULL) return -1;
    *copy = *(plugin_conf_t *)opaque;
    return add_conf_interceptors(conf, copy);
}

static int on_conf_destroy(void *opaque) {
    free(opaque);
    return 0;
}

static int on_new(rdk_client *client, const rdk_conf *conf, void *opaque, char *errstr, size_t size) {
    (void)conf, (void)errstr, (void)size;
    long id = ((plugin_conf_t *)opaque)->channel;
    channel_t *c = id ? channel_find(id) : NULL;
    if (c == NULL) return 0; /* no channel (any more): confluent-kafka's produce() serves */
    /* The reference just taken is the client's, given back by on_destroy(). Only once on_destroy()
     * is in place may the channel know the client: it is how the channel learns it is gone. */
    if (rdk.add_on_destroy(client, INTERCEPTOR, on_destroy, c) != 0) {
        channel_release(c);
        return 0;
    }
    if (rdk.add_on_acknowledgement(client, INTERCEPTOR, on_acknowledgement, c) == 0) {
        pthread_mutex_lock(&c->lock);
        c->client = client;
        pthread_mutex_unlock(&c->lock);
    }
    return 0;
}

/* Owns `state` from the start: freed by on_conf_destroy(), or here if that cannot be added. */
static int add_conf_interceptors(rdk_conf *conf, plugin_conf_t *state) {
    if (rdk.add_on_conf_destroy(conf, INTERCEPTOR, on_conf_destroy, state) != 0) {
        free(state);
        return -1;
    }
    if (rdk.add_on_conf_set(conf, INTERCEPTOR, on_conf_set, state) != 0 ||
        rdk.add_on_conf_dup(conf, INTERCEPTOR, on_conf_dup, state) != 0 ||
        rdk.add_on_new(conf, INTERCEPTOR, on_new, state) != 0)
        return -1;
    return 0;
}

/* librdkafka's plugin entry point: a configuration was given this file in plugin.library.paths. */
__attribute__((visibility("default"))) int conf_init(rdk_conf *conf, void **plugin_opaque, char *errstr,
                                                     size_t size) {
    (void)plugin_opaque;
    if (rdk.found <= 0) { /* jobcompd looks librdkafka up before it makes a producer */
        snprintf(errstr, size, "jobcompd's send loop has not found librdkafka: %s", rdk.why);
        return -1;
    }
    plugin_conf_t *state = calloc(1, sizeof *state);
    if (state == NULL || add_conf_interceptors(conf, state) != 0) {
        snprintf(errstr, size, "jobcompd's send loop cannot add its interceptors");
        return -1;
    }
    return 0;
}

/* -------- Channel: the Python side */

typedef struct {
    PyObject_HEAD
    channel_t *channel;
} Channel;

static int Channel_init(Channel *self, PyObject *args, PyObject *kwds) {
    if (!PyArg_ParseTuple(args, ":Channel") || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "Channel() takes no arguments");
        return -1;
    }
    if (self->channel != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Channel() is made once");
        return -1;
    }
    if (!rdk_find()) {
        PyErr_Format(PyExc_OSError, "librdkafka not found: %s", rdk.why);
        return -1;
    }
    channel_t *c = calloc(1, sizeof *c);
    if (c == NULL || pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        PyErr_NoMemory();
        return -1;
    }
    c->refs = 1;
    pthread_mutex_lock(&registry_lock);
    c->id = ++last_id;
    c->next = registry;
    registry = c;
    pthread_mutex_unlock(&registry_lock);
    self->channel = c;
    return 0;
}

static void Channel_dealloc(Channel *self) {
    channel_t *c = self->channel;
    if (c != NULL) {
        pthread_mutex_lock(&registry_lock);
        channel_t **at = &registry;
        while (*at != NULL && *at != c) at = &(*at)->next;
        if (*at != NULL) *at = c->next;
        pthread_mutex_unlock(&registry_lock);
        channel_release(c);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static channel_t *channel_of(Channel *self) {
    if (self->channel == NULL) PyErr_SetString(PyExc_RuntimeError, "Channel() not initialized");
    return self->channel;
}

static PyObject *Channel_get_id(Channel *self, void *closure) {
    (void)closure;
    channel_t *c = channel_of(self);
    return c == NULL ? NULL : PyLong_FromLong(c->id);
}

static PyObject *Channel_get_connected(Channel *self, void *closure) {
    (void)closure;
    channel_t *c = channel_of(self);
    if (c == NULL) return NULL;
    pthread_mutex_lock(&c->lock);
    int connected = c->client != NULL;
    pthread_mutex_unlock(&c->lock);
    return PyBool_FromLong(connected);
}

typedef struct {
    PyObject *record;   /* its own reference, while the interpreter lock is let go */
    const char *rid, *payload;
    Py_ssize_t rid_len, payload_len;
} outgoing_t;

enum { CHUNK = 256 }; /* records handed over for each time the interpreter lock is let go */

typedef struct {
    int code, fatal;
    char reason[512];
} refusal_t;

/* The librdkafka client the channel serves (NULL, with a Python error, if it has none). */
static rdk_client *channel_client(channel_t *c) {
    pthread_mutex_lock(&c->lock);
    rdk_client *client = c->client;
    pthread_mutex_unlock(&c->lock);
    if (client == NULL) PyErr_SetString(PyExc_RuntimeError, "the channel has no librdkafka client");
    return client;
}

/* Hand out[0], out[1], ... out[n - 1] to rd_kafka_produceva() without the interpreter lock, with
 * the arguments confluent-kafka's produce() is given; stop at the first one it refuses (the
 * refusal in *refusal). How many it took. */
static Py_ssize_t produce_out(channel_t *c, rdk_client *client, const char *topic, long partition,
                              const char *header, const outgoing_t *out, Py_ssize_t n, refusal_t *refusal) {
    Py_ssize_t done = 0;
    Py_BEGIN_ALLOW_THREADS
    producing = c;
    for (; done < n; done++) {
        const outgoing_t *o = &out[done];
        rdk_vu vu[7] = {
            {.vtype = VT_TOPIC, .u.cstr = topic},
            {.vtype = VT_PARTITION, .u.i32 = (int32_t)partition},
            {.vtype = VT_VALUE, .u.mem = {o->payload, (size_t)o->payload_len}},
            {.vtype = VT_KEY, .u.mem = {o->rid, (size_t)o->rid_len}},
            {.vtype = VT_MSGFLAGS, .u.i = MSG_F_COPY},
            {.vtype = VT_HEADER, .u.header = {header, o->rid, o->rid_len}},
            {.vtype = VT_OPAQUE, .u.ptr = NULL},
        };
        rdk_error *refused = rdk.produceva(client, vu, 7);
        if (refused != NULL) {
            refusal->code = rdk.error_code(refused);
            refusal->fatal = rdk.error_is_fatal(refused);
            const char *why = rdk.error_string(refused);
            snprintf(refusal->reason, sizeof refusal->reason, "%s", why != NULL ? why : "");
            rdk.error_destroy(refused);
            break;
        }
    }
    producing = NULL;
    Py_END_ALLOW_THREADS
    return done;
}

/* produce_records(producer, topic, partition, backlog, end, budget, in_flight, header) -> (records
 * handed over, their payload bytes, None or the refusal as (code, fatal, reason)): as the Python
 * loop does, with librdkafka called without the interpreter lock. `producer` is the Producer whose
 * client this channel knows: held for the call, so that its client outlives it. A Python error
 * (a record that is not a SpooledRecord, memory) is returned as an exception in the third place. */
static PyObject *Channel_produce_records(Channel *self, PyObject *const *args, Py_ssize_t nargs) {
    channel_t *c = channel_of(self);
    if (c == NULL) return NULL;
    if (nargs != 8 || !PyUnicode_Check(args[1]) || !PyList_Check(args[3]) || !PyDict_Check(args[6]) ||
        !PyUnicode_Check(args[7])) {
        PyErr_SetString(PyExc_TypeError, "produce_records(producer, topic: str, partition: int, backlog: list, "
                                         "end: int, budget: int, in_flight: dict, header: str)");
        return NULL;
    }
    PyObject *backlog = args[3], *in_flight = args[6];
    const char *topic = PyUnicode_AsUTF8(args[1]), *header = PyUnicode_AsUTF8(args[7]);
    long partition = PyLong_AsLong(args[2]);
    Py_ssize_t end = PyLong_AsSsize_t(args[4]), budget = PyLong_AsSsize_t(args[5]);
    if (topic == NULL || header == NULL || PyErr_Occurred()) return NULL;
    rdk_client *client = channel_client(c);
    if (client == NULL) return NULL;
    outgoing_t out[CHUNK];
    Py_ssize_t sent = 0, size = 0;
    PyObject *error = NULL;
    while (error == NULL && PyList_GET_SIZE(backlog) > end && size < budget) {
        Py_ssize_t length = PyList_GET_SIZE(backlog), n = 0, bytes = 0;
        for (Py_ssize_t i = length - 1; i >= end && n < CHUNK && size + bytes < budget; i--, n++) {
            PyObject *record = PyList_GET_ITEM(backlog, i);
            if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) < 4 ||
                !PyUnicode_Check(PyTuple_GET_ITEM(record, 1)) || !PyBytes_Check(PyTuple_GET_ITEM(record, 3))) {
                PyErr_SetString(PyExc_TypeError, "a backlog record is not a SpooledRecord");
                break;
            }
            outgoing_t *o = &out[n];
            o->rid = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(record, 1), &o->rid_len);
            if (o->rid == NULL) break;
            o->payload = PyBytes_AS_STRING(PyTuple_GET_ITEM(record, 3));
            o->payload_len = PyBytes_GET_SIZE(PyTuple_GET_ITEM(record, 3));
            o->record = Py_NewRef(record);
            bytes += o->payload_len;
        }
        refusal_t refusal = {0, 0, ""};
        Py_ssize_t done = produce_out(c, client, topic, partition, header, out, n, &refusal);
        int code = refusal.code, fatal = refusal.fatal;
        const char *reason = refusal.reason;
        /* The records handed over leave the backlog's end -- which only this thread changes (the
         * sender's lock), checked all the same -- and are entered in flight. */
        int changed = PyList_GET_SIZE(backlog) != length;
        for (Py_ssize_t j = 0; j < done && !changed; j++)
            changed = PyList_GET_ITEM(backlog, length - 1 - j) != out[j].record;
        if (changed) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "the backlog changed while records were produced");
        } else {
            Py_ssize_t entered = 0;
            for (; entered < done; entered++) {
                PyObject *record = out[entered].record;
                PyObject *length_of = PyLong_FromSsize_t(out[entered].payload_len);
                PyObject *entry = length_of == NULL ? NULL
                    : PyTuple_Pack(3, PyTuple_GET_ITEM(record, 0), PyTuple_GET_ITEM(record, 2), length_of);
                Py_XDECREF(length_of);
                if (entry == NULL || PyDict_SetItem(in_flight, PyTuple_GET_ITEM(record, 1), entry) < 0) {
                    Py_XDECREF(entry);
                    break;
                }
                Py_DECREF(entry);
                size += out[entered].payload_len;
                sent++;
            }
            /* (A Python error on the way is set, and taken below; a refusal is returned when
             * every record before it was entered.) */
            if (PyList_SetSlice(backlog, length - entered, length, NULL) == 0 && code != 0 && entered == done &&
                !PyErr_Occurred())
                error = Py_BuildValue("(iis)", code, fatal, reason);
        }
        for (Py_ssize_t j = 0; j < n; j++) Py_DECREF(out[j].record);
        if (PyErr_Occurred()) {
            Py_XDECREF(error);
            error = take_exception();
        }
    }
    if (error == NULL && PyErr_Occurred()) error = take_exception();
    return Py_BuildValue("(nnN)", sent, size, error != NULL ? error : Py_NewRef(Py_None));
}

/* produce_columns(producer, topic, partition, rids, payloads, start, header) -> (records handed
 * over, their payload bytes, None or the refusal as (code, fatal, reason), or an exception): records
 * rids[i], payloads[i] for i from `start` on, in order, as produce_records() hands them over, for a
 * batch not spooled yet (Sender.send_batch_early): nothing is entered in flight. */
static PyObject *Channel_produce_columns(Channel *self, PyObject *const *args, Py_ssize_t nargs) {
    channel_t *c = channel_of(self);
    if (c == NULL) return NULL;
    if (nargs != 7 || !PyUnicode_Check(args[1]) || !PyList_Check(args[3]) || !PyList_Check(args[4]) ||
        !PyUnicode_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "produce_columns(producer, topic: str, partition: int, rids: list, "
                                         "payloads: list, start: int, header: str)");
        return NULL;
    }
    PyObject *rids = args[3], *payloads = args[4];
    const char *topic = PyUnicode_AsUTF8(args[1]), *header = PyUnicode_AsUTF8(args[6]);
    long partition = PyLong_AsLong(args[2]);
    Py_ssize_t at = PyLong_AsSsize_t(args[5]);
    if (topic == NULL || header == NULL || PyErr_Occurred()) return NULL;
    if (PyList_GET_SIZE(rids) != PyList_GET_SIZE(payloads) || at < 0) {
        PyErr_SetString(PyExc_ValueError, "produce_columns(): as many record ids as payloads, start >= 0");
        return NULL;
    }
    rdk_client *client = channel_client(c);
    if (client == NULL) return NULL;
    outgoing_t out[CHUNK];
    PyObject *held[CHUNK]; /* the payloads of out[] */
    Py_ssize_t sent = 0, size = 0;
    PyObject *error = NULL;
    while (error == NULL && at < PyList_GET_SIZE(rids) && at < PyList_GET_SIZE(payloads)) {
        Py_ssize_t n = 0;
        for (; at + n < PyList_GET_SIZE(rids) && at + n < PyList_GET_SIZE(payloads) && n < CHUNK; n++) {
            PyObject *rid = PyList_GET_ITEM(rids, at + n), *payload = PyList_GET_ITEM(payloads, at + n);
            if (!PyUnicode_Check(rid) || !PyBytes_Check(payload)) {
                PyErr_SetString(PyExc_TypeError, "a record id is not a str, or a payload not bytes");
                break;
            }
            outgoing_t *o = &out[n];
            o->rid = PyUnicode_AsUTF8AndSize(rid, &o->rid_len);
            if (o->rid == NULL) break;
            o->payload = PyBytes_AS_STRING(payload);
            o->payload_len = PyBytes_GET_SIZE(payload);
            /* Both held while the interpreter lock is let go (the rid's UTF-8 lives with it). */
            o->record = Py_NewRef(rid);
            held[n] = Py_NewRef(payload);
        }
        refusal_t refusal = {0, 0, ""};
        Py_ssize_t done = produce_out(c, client, topic, partition, header, out, n, &refusal);
        int code = refusal.code, fatal = refusal.fatal;
        const char *reason = refusal.reason;
        for (Py_ssize_t j = 0; j < n; j++) {
            if (j < done) size += out[j].payload_len;
            Py_DECREF(out[j].record);
            Py_DECREF(held[j]);
        }
        sent += done;
        at += done;
        if (code != 0) error = Py_BuildValue("(iis)", code, fatal, reason);
        else if (PyErr_Occurred()) error = take_exception();
        else if (done < n) break;
    }
    if (error == NULL && PyErr_Occurred()) error = take_exception();
    return Py_BuildValue("(nnN)", sent, size, error != NULL ? error : Py_NewRef(Py_None));
}

/* take(reports) -> the failures: the acks held since the last take() are handed over, each
 * delivered one's record id (bytes) appended to reports.delivered (reports.since set to the first
 * ack's time if reports held none), and each failure returned as (code, key, payload, partition,
 * offset). */
static PyObject *Channel_take(Channel *self, PyObject *reports_arg) {
    channel_t *c = channel_of(self);
    if (c == NULL) return NULL;
    if (!PyObject_TypeCheck(reports_arg, &ReportsType)) {
        PyErr_SetString(PyExc_TypeError, "take(reports: Reports)");
        return NULL;
    }
    Reports *reports = (Reports *)reports_arg;
    if (reports->delivered == NULL || reports->failed == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Reports() not initialized");
        return NULL;
    }
    pthread_mutex_lock(&c->lock);
    ack_t *acks = c->acks;
    char *arena = c->arena;
    size_t count = c->count;
    double first_at = c->first_at;
    if (count) {
        c->acks = NULL, c->arena = NULL;
        c->count = c->capacity = c->used = c->room = 0;
    }
    pthread_mutex_unlock(&c->lock);
    PyObject *failed = PyList_New(0);
    if (failed == NULL || count == 0) goto done;
    if (PyList_GET_SIZE(reports->delivered) == 0 && PyList_GET_SIZE(reports->failed) == 0)
        reports->since = first_at;
    for (size_t i = 0; i < count; i++) {
        ack_t *a = &acks[i];
        PyObject *key = PyBytes_FromStringAndSize(arena + a->at, (Py_ssize_t)a->key_len), *item = key;
        if (key != NULL && a->err != 0) {
            item = Py_BuildValue("(iNy#iL)", a->err, key, arena + a->at + a->key_len,
                                 (Py_ssize_t)a->payload_len, (int)a->partition, (long long)a->offset);
        }
        if (item == NULL || PyList_Append(a->err ? failed : reports->delivered, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(failed); /* (the acks not handed over are lost: their records are sent again) */
            break;
        }
        Py_DECREF(item);
    }
done:
    free(acks);
    free(arena);
    return failed;
}

static PyMethodDef Channel_methods[] = {
    {"produce_records", (PyCFunction)(void (*)(void))Channel_produce_records, METH_FASTCALL,
     "produce_records(producer, topic, partition, backlog, end, budget, in_flight, header) -> (records "
     "handed over, their payload bytes, None or the refusal as (code, fatal, reason), or an exception)."},
    {"produce_columns", (PyCFunction)(void (*)(void))Channel_produce_columns, METH_FASTCALL,
     "produce_columns(producer, topic, partition, rids, payloads, start, header) -> (records handed over, "
     "their payload bytes, None or the refusal as (code, fatal, reason), or an exception)."},
    {"take", (PyCFunction)Channel_take, METH_O,
     "take(reports) -> failures: delivered record ids to reports.delivered; each failure as (code, key, "
     "payload, partition, offset)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Channel_getset[] = {
    {"id", (getter)Channel_get_id, NULL, "The number the producer's jobcompd.channel property gives.", NULL},
    {"connected", (getter)Channel_get_connected, NULL, "Whether a librdkafka client uses this channel.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "jobcompd._sendloop.Channel",
    .tp_basicsize = sizeof(Channel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Channel(): records produced straight to librdkafka, and how each ended.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Channel_init,
    .tp_dealloc = (destructor)Channel_dealloc,
    .tp_methods = Channel_methods,
    .tp_getset = Channel_getset,
};

/* librdkafka(): "" once librdkafka's functions are found, else why they are not. */
static PyObject *librdkafka(PyObject *module, PyObject *unused) {
    (void)module, (void)unused;
    return PyUnicode_FromString(rdk_find() ? "" : rdk.why);
}

static PyMethodDef sendloop_methods[] = {
    {"produce_records", (PyCFunction)(void (*)(void))produce_records, METH_FASTCALL,
     "produce_records(produce, topic, partition, backlog, end, budget, in_flight, header) -> "
     "(records handed over, their payload bytes, the exception that stopped the loop or None)."},
    {"delivered_pairs", (PyCFunction)(void (*)(void))delivered_pairs, METH_FASTCALL,
     "delivered_pairs(keys, in_flight, early) -> ((seq, jobid) pairs, record ids), or None when a report "
     "is not the usual one."},
    {"forget", (PyCFunction)(void (*)(void))forget, METH_FASTCALL,
     "forget(in_flight, rids) -> the payload bytes of the entries taken out of flight."},
    {"librdkafka", librdkafka, METH_NOARGS,
     "librdkafka() -> '' once the librdkafka confluent-kafka loaded is found, else why it is not."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef sendloop_module = {
    PyModuleDef_HEAD_INIT, "_sendloop",
    "The compiled twin of jobcompd.sendloop (see jobcompd/sendloop.py).", -1, sendloop_methods,
};

PyMODINIT_FUNC PyInit__sendloop(void) {
    if (PyType_Ready(&ReportsType) < 0 || PyType_Ready(&ChannelType) < 0) return NULL;
    if (key_method == NULL && (key_method = PyUnicode_InternFromString("key")) == NULL) return NULL;
    PyObject *m = PyModule_Create(&sendloop_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Reports", (PyObject *)&ReportsType) < 0 ||
        PyModule_AddObjectRef(m, "Channel", (PyObject *)&ChannelType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
