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

static PyMethodDef sendloop_methods[] = {
    {"produce_records", (PyCFunction)(void (*)(void))produce_records, METH_FASTCALL,
     "produce_records(produce, topic, partition, backlog, end, budget, in_flight, header) -> "
     "(records handed over, their payload bytes, the exception that stopped the loop or None)."},
    {"delivered_pairs", (PyCFunction)(void (*)(void))delivered_pairs, METH_FASTCALL,
     "delivered_pairs(keys, in_flight, early) -> ((seq, jobid) pairs, record ids), or None when a report "
     "is not the usual one."},
    {"forget", (PyCFunction)(void (*)(void))forget, METH_FASTCALL,
     "forget(in_flight, rids) -> the payload bytes of the entries taken out of flight."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef sendloop_module = {
    PyModuleDef_HEAD_INIT, "_sendloop",
    "The compiled twin of jobcompd.sendloop (see jobcompd/sendloop.py).", -1, sendloop_methods,
};

PyMODINIT_FUNC PyInit__sendloop(void) {
    if (PyType_Ready(&ReportsType) < 0) return NULL;
    if (key_method == NULL && (key_method = PyUnicode_InternFromString("key")) == NULL) return NULL;
    PyObject *m = PyModule_Create(&sendloop_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Reports", (PyObject *)&ReportsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
