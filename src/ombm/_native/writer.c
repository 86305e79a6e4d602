/*
 * Signal-on-write (paper §3.3: the write of a unit's last byte raises the signal): the Writer,
 * Region.write's fast path (core/segment.py), and a channel's round-robin send that the RPC
 * slots and lanes use.
 */
#include "faults.h"
#include "fifo.h"
#include "frame.h"
#include "writer.h"

/* Signals pushed by Writer objects (ombm.stats() adds them to the Python counters). */
static unsigned long long writer_signals_sent = 0;

/* Writer: Region.write's fast path (paper §3.3). Copies the data into the bound segment and,
   for each signalling unit whose last byte it wrote, pushes (segment id, unit offset) into the
   FIFO of every receiver watching that unit: the route, cached per unit offset and dropped
   whenever the segment's directory version moves. The routes come from the segment's Python
   Router, their FIFOs as FifoMaps (validated mappings, fifo.h); anything out of the ordinary
   goes back to Python: a write the fast path does not take (bad arguments, a closed binding:
   `slow` raises the documented errors), a route with a software-only receiver (`deliver`), and
   a fan-out that dropped, woke or must ring a doorbell (`after`). Each cached route keeps the
   FIFO mappings it points into alive. The data is copied with plain stores: the push publishes
   it (see native.h). Fault injection (faults.h) happens here, where the native path writes and
   signals: a message's bit flipped after its copy and before its signals, a signal to a receiver
   dropped in the fan-out. */
static int Writer_init(Writer *w, PyObject *args, PyObject *Py_UNUSED(kw)) {
    unsigned long long base, version_addr, seg_id;
    Py_ssize_t size, unit;
    PyObject *slow, *route_fn, *deliver_fn, *after_fn;
    int message;
    if (!PyArg_ParseTuple(args, "KnnKKOOOOp", &base, &size, &unit, &version_addr, &seg_id, &slow, &route_fn,
                          &deliver_fn, &after_fn, &message))
        return -1;
    if (!base || size < 0 || unit < 0 || !version_addr || (version_addr & 7)) {
        PyErr_SetString(PyExc_ValueError, "Writer: bad base, size, unit or version address");
        return -1;
    }
    w->base = (unsigned char *)(uintptr_t)base;
    w->size = size;
    w->unit = unit;
    w->message = message;
    w->version_addr = (uintptr_t)version_addr;
    w->version = UINT64_MAX;
    w->seg_id = seg_id;
    Py_XSETREF(w->routes, PyDict_New());
    if (!w->routes) return -1;
    Py_INCREF(slow); Py_XSETREF(w->slow, slow);
    Py_INCREF(route_fn); Py_XSETREF(w->route_fn, route_fn);
    Py_INCREF(deliver_fn); Py_XSETREF(w->deliver_fn, deliver_fn);
    Py_INCREF(after_fn); Py_XSETREF(w->after_fn, after_fn);
    return 0;
}

static int Writer_traverse(Writer *w, visitproc visit, void *arg) {
    Py_VISIT(w->routes); Py_VISIT(w->slow); Py_VISIT(w->route_fn); Py_VISIT(w->deliver_fn); Py_VISIT(w->after_fn);
    return 0;
}

static int Writer_clear(Writer *w) {
    Py_CLEAR(w->routes); Py_CLEAR(w->slow); Py_CLEAR(w->route_fn); Py_CLEAR(w->deliver_fn); Py_CLEAR(w->after_fn);
    return 0;
}

/* Signal every receiver watching the unit at `start`: 0, or -1 with an exception set. */
int writer_deliver(Writer *w, Py_ssize_t start) {
    /* acquire: pairs with the release store of whoever moved the version after changing the
       directory, so the route looked up below reads the new directory */
    uint64_t v = atomic_load_explicit(A64(w->version_addr), memory_order_acquire);
    if (v != w->version) {
        PyDict_Clear(w->routes);
        w->version = v;
    }
    PyObject *key = PyLong_FromSsize_t(start);
    if (!key) return -1;
    PyObject *route = PyDict_GetItemWithError(w->routes, key);
    if (route) {
        Py_INCREF(route);
    } else {
        if (PyErr_Occurred()) { Py_DECREF(key); return -1; }
        route = PyObject_CallOneArg(w->route_fn, key);
        if (!route) { Py_DECREF(key); return -1; }
        if (!PyTuple_Check(route) || PyTuple_GET_SIZE(route) != 3 || !PyTuple_Check(PyTuple_GET_ITEM(route, 0)) ||
            !PyTuple_Check(PyTuple_GET_ITEM(route, 2))) {
            Py_DECREF(route); Py_DECREF(key);
            PyErr_SetString(PyExc_TypeError, "Writer: route must be (FifoMaps, memory refs, kernel refs)");
            return -1;
        }
        if (PyDict_SetItem(w->routes, key, route) < 0) { Py_DECREF(route); Py_DECREF(key); return -1; }
    }
    int rc = 0;
    if (PyTuple_GET_SIZE(PyTuple_GET_ITEM(route, 2))) {  /* a software-only receiver: Python sends */
        PyObject *r = PyObject_CallOneArg(w->deliver_fn, key);
        if (!r) rc = -1; else Py_DECREF(r);
        goto out;
    }
    PyObject *fifos = PyTuple_GET_ITEM(route, 0);
    unsigned long long result;
    PyObject *far;
    int lost = fifo_fanout(fifos, w->seg_id, (uint64_t)start, FAULTS_DROP, &result, &far);
    if (lost < 0) { rc = -1; goto out; }
    writer_signals_sent += (unsigned long long)(PyTuple_GET_SIZE(fifos) - lost);
    if (result || far) {  /* drops to count (and maybe a dead receiver), a wake-up to count, doorbells */
        PyObject *ro = PyLong_FromUnsignedLongLong(result);
        if (ro && far) Py_SETREF(ro, PyNumber_Or(ro, far));
        Py_XDECREF(far);
        if (!ro) { rc = -1; goto out; }
        PyObject *r = PyObject_CallFunctionObjArgs(w->after_fn, ro, PyTuple_GET_ITEM(route, 1), NULL);
        Py_DECREF(ro);
        if (!r) rc = -1; else Py_DECREF(r);
    }
out:
    Py_DECREF(route);
    Py_DECREF(key);
    return rc;
}

/* The next unit (round robin) for a message of n bytes: its start offset, or -1 with an exception. */
static Py_ssize_t writer_next_unit(Writer *w, Py_ssize_t n) {
    Py_ssize_t unit = w->unit;
    if (!w->base || !unit || w->size % unit) {
        PyErr_SetString(PyExc_ValueError, "Writer.send: closed, or not a binding cut into whole signalling units");
        return -1;
    }
    if (n > unit) {
        PyErr_Format(PyExc_ValueError, "Writer.send: %zd bytes do not fit a %zd-byte unit", n, unit);
        return -1;
    }
    Py_ssize_t slot = w->next_unit;
    if (slot < 0 || slot >= w->size / unit) slot = 0;
    w->next_unit = slot + 1 < w->size / unit ? slot + 1 : 0;
    return slot * unit;
}

/* Copy n bytes to end at the end of the next unit (round robin), raising that unit's signal:
   an RPC channel's send (rpc/slots.py), whose units are its slots. 0, or -1 with an exception. */
static int writer_send(Writer *w, const char *src, Py_ssize_t n) {
    Py_ssize_t start = writer_next_unit(w, n);
    if (start < 0) return -1;
    unsigned char *at = w->base + start + w->unit - n;
    memcpy(at, src, (size_t)n);
    if (!n) return 0;
    if (FAULTS_CORRUPT && w->message) fault_corrupt(at, n);
    return writer_deliver(w, start);
}

/* The frame goes straight into the slot and its checksum is summed there, the last 8 bytes
   written (no frame built aside). Whoever could change the slot meanwhile is its reader, who
   only spoils its own copy. */
int writer_send_frame(Writer *w, unsigned kind, uint64_t conn, uint64_t msg, uint64_t ack,
                      const char *payload, Py_ssize_t plen) {
    Py_ssize_t n = plen + TRAILER;
    Py_ssize_t start = writer_next_unit(w, n);
    if (start < 0) return -1;
    frame_trailer t = {conn, msg, ack, (uint32_t)plen, 0, 0, 1, (uint8_t)kind};
    unsigned char *at = w->base + start + w->unit - n;
    frame_put(at, payload, &t);
    if (FAULTS_CORRUPT && w->message) fault_corrupt(at, n);
    return writer_deliver(w, start);
}

static PyObject *Writer_send(Writer *w, PyObject *data) {
    Py_buffer v;
    if (PyObject_GetBuffer(data, &v, PyBUF_SIMPLE) < 0) return NULL;
    int rc = writer_send(w, v.buf, v.len);
    PyBuffer_Release(&v);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

/* write(offset, data): copy, then raise one signal per completed unit. */
static PyObject *Writer_write(Writer *w, PyObject *const *args, Py_ssize_t nargs) {
    if (!w->base || nargs != 2 || !PyLong_CheckExact(args[0])) return PyObject_Vectorcall(w->slow, args, nargs, NULL);
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    if (off == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return PyObject_Vectorcall(w->slow, args, nargs, NULL);
    }
    PyObject *d = args[1];
    Py_buffer view;
    const char *src;
    Py_ssize_t n;
    int has_view = 0;
    if (PyBytes_CheckExact(d)) {
        src = PyBytes_AS_STRING(d); n = PyBytes_GET_SIZE(d);
    } else if (PyByteArray_CheckExact(d)) {
        src = PyByteArray_AS_STRING(d); n = PyByteArray_GET_SIZE(d);
    } else {
        if (PyObject_GetBuffer(d, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            return PyObject_Vectorcall(w->slow, args, nargs, NULL);
        }
        has_view = 1; src = view.buf; n = view.len;
    }
    if (off < 0 || n > w->size - off) {
        if (has_view) PyBuffer_Release(&view);
        return PyObject_Vectorcall(w->slow, args, nargs, NULL);  /* raises AddressError */
    }
    memmove(w->base + off, src, (size_t)n);
    if (has_view) PyBuffer_Release(&view);
    if (FAULTS_CORRUPT && w->message && n) fault_corrupt(w->base + off, n);
    Py_ssize_t unit = w->unit, size = w->size, end = off + n;
    if (unit && n) {
        for (Py_ssize_t start = off / unit * unit; start < size; start += unit) {
            Py_ssize_t unit_end = start + unit < size ? start + unit : size;
            if (unit_end > end) break;
            if (writer_deliver(w, start) < 0) return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* signal(offset): raise the signal of the unit holding `offset` without writing (a frame whose
   last byte was written unsignalled: a burst's last fragment, or one a reader was not reading for). */
static PyObject *Writer_signal(Writer *w, PyObject *arg) {
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred()) return NULL;
    if (!w->base || !w->unit || off < 0 || off >= w->size) {
        PyErr_SetString(PyExc_ValueError, "Writer.signal: closed, not a signalling binding, or outside it");
        return NULL;
    }
    if (writer_deliver(w, off / w->unit * w->unit) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Writer_close(Writer *w, PyObject *Py_UNUSED(ignored)) {
    w->base = NULL;
    if (w->routes) PyDict_Clear(w->routes);
    Py_RETURN_NONE;
}

static PyObject *n_writer_counters(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromUnsignedLongLong(writer_signals_sent);
}

static PyObject *n_writer_counters_reset(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    writer_signals_sent = 0;
    Py_RETURN_NONE;
}

static PyMethodDef Writer_methods[] = {
    {"write", (PyCFunction)(void (*)(void))Writer_write, METH_FASTCALL,
     "write(offset, data): copy data in, then signal every unit whose last byte it wrote"},
    {"send", (PyCFunction)Writer_send, METH_O,
     "send(data): write data to end at the end of the next unit (round robin): that unit's one signal"},
    {"signal", (PyCFunction)Writer_signal, METH_O,
     "signal(offset): raise the signal of the unit holding offset, writing nothing"},
    {"close", (PyCFunction)Writer_close, METH_NOARGS, "stop writing: every later write takes the slow path"},
    {NULL, NULL, 0, NULL},
};

PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    NATIVE_TYPE(Writer),
    .tp_doc = "Writer(base, size, unit, version_address, segment_id, slow, route, deliver, after, message): "
              "the fast path of Region.write",
};

static PyMethodDef writer_functions[] = {
    {"writer_signals_sent", n_writer_counters, METH_NOARGS, "signals pushed by Writer objects in this process"},
    {"writer_signals_reset", n_writer_counters_reset, METH_NOARGS, "zero the Writer counter (after fork)"},
    {NULL, NULL, 0, NULL},
};

/* The Writer's functions and type, and those of fault injection (faults.c), which happens in its path. */
int native_add_writer(PyObject *module) {
    if (native_add_faults(module) < 0) return -1;
    return native_add(module, writer_functions, (PyTypeObject *const[]){&WriterType, NULL});
}
