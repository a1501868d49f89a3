/* The compiled twin of jobcompd.sendloop.produce_records(): the loop of every record sent.
 *
 * jobcompd/sendloop.py holds the Python twin, the reference; this file does what it does, step for
 * step, without the interpreter's work per record around each produce() call (the loop, the
 * record's fields, the header list, the in-flight entry). produce() itself is confluent-kafka's,
 * called with the same arguments in the same order. tests/test_sendloop.py runs both on the same
 * backlogs and compares the calls, the backlog, the in-flight entries and what they return.
 *
 * A record is a SpooledRecord (a tuple: seq, rid, jobid, payload, ...). Every exception on the way
 * -- produce() refusing a record, memory -- ends the loop and is returned, not raised, with the
 * record it concerns left at the end of the backlog: the caller counts what was handed over first.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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
        Py_DECREF(record);
        if (!failed) {
            size += bytes;
            sent++;
            /* The record handed over leaves the backlog (the last item: nothing moves). */
            failed = PyList_SetSlice(backlog, last, last + 1, NULL) < 0;
        }
        if (failed) {
            error = take_exception();
            break;
        }
    }
    Py_DECREF(zero);
    return Py_BuildValue("(nnN)", sent, size, error != NULL ? error : Py_NewRef(Py_None));
}

static PyMethodDef sendloop_methods[] = {
    {"produce_records", (PyCFunction)(void (*)(void))produce_records, METH_FASTCALL,
     "produce_records(produce, topic, partition, backlog, end, budget, in_flight, header) -> "
     "(records handed over, their payload bytes, the exception that stopped the loop or None)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef sendloop_module = {
    PyModuleDef_HEAD_INIT, "_sendloop",
    "The compiled twin of jobcompd.sendloop.produce_records (see jobcompd/sendloop.py).", -1, sendloop_methods,
};

PyMODINIT_FUNC PyInit__sendloop(void) { return PyModule_Create(&sendloop_module); }
