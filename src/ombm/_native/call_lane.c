/*
 * CallLane: a synchronous RPC call's no-loss path in one native call (paper §4: the timer and
 * the rest of the transport cost nothing when nothing is lost). rpc/client.py drives it.
 *
 * While nothing else of the client is outstanding, the Python ClientProtocol *lends* the lane
 * its call ids (lend(next_id, patience)): from then on call(method, args, kwargs, ...) takes the
 * next id itself, marshals the call with the lane's own msgpack Packer (the caller leads the
 * client's receiver, so one thread at a time), writes one CALL frame acking everything before
 * it straight into the next request slot (its last byte signals the server), waits (spin, then
 * futex sleep) on the caller's signal FIFO and takes the reply: the frame in the reply slot the
 * signal names, through THE frame check (frame_take), and accepted only if it is a whole REPLY
 * or ERROR_REPLY of this connection and call. A REPLY that unmarshals to [0, result]
 * (unpack(payload, ext_hook=..., strict_map_key=False)) is the call's value; the lane counts the
 * call and remembers its round trip, and that is all the protocol would have done. reclaim()
 * gives the protocol its state back: the next id, the calls made, the call in progress if any,
 * the last round trip.
 *
 * Everything else is handed back to Python untouched by policy, with the call id when the call
 * is now the protocol's to settle: the raw reply (an error, or a reply the native unmarshal
 * refused: Python's decode raises the documented error), a signal for another segment or a frame
 * the lane does not take (LANE_OTHER, with the signal), no signal within the patience
 * (LANE_TIMEOUT, or LANE_STALLED if the FIFO's head cell was claimed and never published), a
 * call that does not marshal or fit one frame (LANE_UNSENT: nothing written, no id taken), or no
 * lent state (LANE_NOT_LENT). The result is a CallResult record.
 *
 * take() is the pipelined calls' drain (issue 13: many calls outstanding share wake-ups): it waits
 * as call() does if the FIFO is empty, then takes every signal there (bounded), checks each reply
 * frame as call() does (of this connection, any call id: the Python protocol decides which ids it
 * completes) and unmarshals the results, so that one Python step completes a whole batch.
 */
#include "fifo.h"
#include "frame.h"
#include "lane.h"
#include "writer.h"

static PyTypeObject CallResultType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.CallResult",
    .tp_doc = "What CallLane.call did. status: a LANE_* constant; value: the call's result (LANE_VALUE), the "
              "reply's payload bytes (LANE_REPLY, LANE_ERROR_REPLY), else None; waited_ns: how long the call "
              "waited for a signal; call_id: the call the protocol must settle (a reply after reclaim(): end "
              "it; LANE_OTHER, LANE_TIMEOUT, LANE_STALLED: adopt it), 0 if none; segment_id, offset: the "
              "signal (LANE_OTHER), else 0.",
    RECORD_TYPE_SLOTS,
};
static const char *const call_result_fields[] = {"status", "value", "waited_ns", "call_id", "segment_id", "offset",
                                                 NULL};

/* A CallResult; `value` a new reference. */
static PyObject *call_result(int status, PyObject *value, uint64_t waited_ns, uint64_t call_id, uint64_t seg,
                             uint64_t off) {
    PyObject *fields[6] = {PyLong_FromLong(status), value, PyLong_FromUnsignedLongLong(waited_ns),
                           PyLong_FromUnsignedLongLong(call_id), PyLong_FromUnsignedLongLong(seg),
                           PyLong_FromUnsignedLongLong(off)};
    return record_new(&CallResultType, fields);
}

static PyObject *call_unsent(int status) { return call_result(status, Py_NewRef(Py_None), 0, 0, 0, 0); }

typedef struct {
    PyObject_HEAD
    Writer *request;          /* the request channel's writer; NULL once closed */
    FifoMap *fifo;            /* the caller's signal FIFO */
    unsigned long long reply_seg;
    const unsigned char *reply_base;
    Py_ssize_t reply_size, reply_slot;
    unsigned long long connection_id;
    Py_ssize_t max_payload;   /* the largest message in one frame */
    Marshal marshal;          /* the call's marshaller and the reply's unmarshaller */
    PyObject *message;        /* the last call's marshalled message (None before the first) */
    /* the protocol state lent by lend(), given back by reclaim() */
    int lent;
    unsigned long long next_id, calls, current;  /* current: the call on its way, 0 if none */
    uint64_t rtt_ns;          /* the last call's round trip, 0 if none since lend() */
    double patience_s;        /* how long a call waits on the lane before it goes to the timer */
} CallLane;

static int CallLane_init(CallLane *l, PyObject *args, PyObject *Py_UNUSED(kw)) {
    PyObject *writer, *fifo_o, *packer, *unpack, *ext_hook;
    unsigned long long reply_seg, reply_base, conn;
    Py_ssize_t reply_size, reply_slot, max_payload;
    if (!PyArg_ParseTuple(args, "O!OKKnnKnOOO", &WriterType, &writer, &fifo_o, &reply_seg, &reply_base, &reply_size,
                          &reply_slot, &conn, &max_payload, &packer, &unpack, &ext_hook))
        return -1;
    if (lane_check_ends("CallLane", ((Writer *)writer)->unit, max_payload, fifo_o, reply_base, reply_size, reply_slot,
                        unpack) < 0)
        return -1;
    if (marshal_init(&l->marshal, packer, unpack, ext_hook) < 0) return -1;
    Py_XSETREF(l->message, Py_NewRef(Py_None));
    l->lent = 0;
    l->calls = l->current = 0;
    l->rtt_ns = 0;
    l->max_payload = max_payload;
    Py_XSETREF(l->request, (Writer *)Py_NewRef(writer));
    Py_XSETREF(l->fifo, (FifoMap *)Py_NewRef(fifo_o));
    l->reply_seg = reply_seg;
    l->reply_base = (const unsigned char *)(uintptr_t)reply_base;
    l->reply_size = reply_size;
    l->reply_slot = reply_slot;
    l->connection_id = conn;
    return 0;
}

static int CallLane_traverse(CallLane *l, visitproc visit, void *arg) {
    Py_VISIT(l->request); Py_VISIT(l->message);
    return marshal_traverse(&l->marshal, visit, arg);
}
static int CallLane_clear(CallLane *l) {
    Py_CLEAR(l->request); Py_CLEAR(l->message); Py_CLEAR(l->fifo);  /* (a FifoMap holds no references) */
    marshal_clear(&l->marshal);
    return 0;
}

/* call(method, args, kwargs, spin_ns, sleep_ok) -> CallResult (see the file's comment). The
   message written stays in `message`. */
static PyObject *CallLane_call(CallLane *l, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "call(method, args, kwargs, spin_ns, sleep_ok)");
        return NULL;
    }
    if (!l->request) {
        PyErr_SetString(PyExc_ValueError, "CallLane is closed");
        return NULL;
    }
    uint64_t spin_ns = PyLong_AsUnsignedLongLong(args[3]);
    if (spin_ns == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    int sleep_ok = PyObject_IsTrue(args[4]);
    if (sleep_ok < 0) return NULL;
    if (!l->lent) return call_unsent(LANE_NOT_LENT);
    /* the message: [method, [args...], kwargs] as marshal.encode_call packs it (lists: the packer
       keeps a tuple for the user's own tuples) */
    if (!PyUnicode_Check(args[0]) || !PyTuple_Check(args[1]) || !PyDict_Check(args[2]))
        return call_unsent(LANE_UNSENT);
    PyObject *triple = PyList_New(3);
    PyObject *positional = triple ? PySequence_List(args[1]) : NULL;
    if (!positional) {
        Py_XDECREF(triple);
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_INCREF(args[2]);
    PyList_SET_ITEM(triple, 0, args[0]);
    PyList_SET_ITEM(triple, 1, positional);
    PyList_SET_ITEM(triple, 2, args[2]);
    PyObject *message = marshal_pack_direct(&l->marshal, triple);  /* a large buffer: copied once */
    if (!message && !PyErr_Occurred()) message = marshal_pack(&l->marshal, triple);
    Py_DECREF(triple);
    if (!message) return PyErr_Occurred() ? NULL : call_unsent(LANE_UNSENT);
    if (!PyBytes_CheckExact(message) || PyBytes_GET_SIZE(message) > l->max_payload || !l->lent) {
        Py_DECREF(message);  /* (lent again: packing ran Python code, which may have reclaimed) */
        return call_unsent(l->lent ? LANE_UNSENT : LANE_NOT_LENT);
    }
    Py_XSETREF(l->message, message);
    /* the id is taken before the write, which may run Python code (a route to look up, a
       wake-up to count) and so let another thread reclaim the state */
    unsigned long long call_id = l->next_id++;
    l->calls++;
    l->current = call_id;
    /* one CALL frame, ack = call id: the caller waits for nothing older */
    if (writer_send_frame(l->request, KIND_CALL, l->connection_id, call_id, call_id, PyBytes_AS_STRING(message),
                          PyBytes_GET_SIZE(message)) < 0)
        return NULL;  /* the call stays current, for the protocol to cancel */
    const FifoMap *f = l->fifo;
    uint64_t waited;
    FifoMap *peer = writer_peer(l->request);  /* the server's receiver (or the bridge's): held while waiting */
    int r = wait_signal_for(f, peer, spin_ns, l->patience_s, sleep_ok, &waited);
    Py_XDECREF(peer);
    if (r < 0) return NULL;  /* e.g. KeyboardInterrupt: the call stays current, for the protocol to cancel */
    /* Python may have run meanwhile (another thread, a signal handler): the state may be reclaimed */
    unsigned long long settle = l->lent ? 0 : call_id;
    uint64_t seg = 0, off = 0;  /* (set when fifo_take returns 1) */
    if (r != WAIT_READY || !fifo_take(f, &seg, &off))
        return call_result(r == WAIT_STALLED ? LANE_STALLED : LANE_TIMEOUT, Py_NewRef(Py_None), waited, call_id, 0, 0);
    frame_split s;
    unsigned kind = 0;
    uint64_t got = 0;
    if (seg == l->reply_seg && lane_take_reply(l->reply_base, l->reply_size, l->reply_slot, l->connection_id, off, &kind, &got, &s)) {
        if (got == call_id) {
            if (!settle) {  /* the call is over: what the protocol's end_call would do */
                l->current = 0;
                l->rtt_ns = waited ? waited : 1;
            }
            PyObject *value;
            int status = lane_settle_reply(&l->marshal, kind, &s, &value);
            if (status < 0) return NULL;
            return call_result(status, value, waited, settle, 0, 0);
        }
        frame_split_clear(&s);
    }
    return call_result(LANE_OTHER, Py_NewRef(Py_None), waited, call_id, seg, off);
}

/* One entry of take(): (status, a, b), the references stolen (NULL: an exception is set). */
static PyObject *take_entry(int status, PyObject *a, PyObject *b) {
    if (!a || !b) { Py_XDECREF(a); Py_XDECREF(b); return NULL; }
    PyObject *s = PyLong_FromLong(status);
    if (!s) { Py_DECREF(a); Py_DECREF(b); return NULL; }
    PyObject *t = PyTuple_New(3);
    if (!t) { Py_DECREF(s); Py_DECREF(a); Py_DECREF(b); return NULL; }
    PyTuple_SET_ITEM(t, 0, s);
    PyTuple_SET_ITEM(t, 1, a);
    PyTuple_SET_ITEM(t, 2, b);
    return t;
}

/* take(limit, spin_ns, timeout_s, sleep_ok) -> (wait status, waited_ns, entries): the pipelined
   calls' drain (issue 13: replies taken per wake-up, not one per signal). Waits (spin, then
   futex sleep, without the GIL) up to timeout_s for a signal if none is there (0: no wait), then
   takes every signal in the FIFO, at most `limit`, in FIFO order, each through THE frame check
   (frame_take). An entry is (LANE_VALUE, call id, result) for a whole REPLY of this connection
   that unmarshals to [0, result]; (LANE_REPLY or LANE_ERROR_REPLY, call id, payload) for any
   other whole reply of this connection; (LANE_OTHER, segment id, offset) for every other signal
   (another segment, or a frame the lane does not take: Python's protocol takes it). The call ids
   are the peer's word: the protocol decides what they complete. Uses no lent state: the caller
   leads the client's receiver, and the lane may be lent or not. */
static PyObject *CallLane_take(CallLane *l, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "take(limit, spin_ns, timeout_s, sleep_ok)");
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[0]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    uint64_t spin_ns, waited = 0;
    double timeout_s;
    int sleep_ok, r = WAIT_READY;
    if (parse_wait_policy(args + 1, 3, &spin_ns, &timeout_s, &sleep_ok) < 0) return NULL;
    if (!l->reply_base) {
        PyErr_SetString(PyExc_ValueError, "CallLane is closed");
        return NULL;
    }
    const FifoMap *f = l->fifo;
    if (timeout_s > 0) {
        r = wait_signal(f, spin_ns, timeout_s, sleep_ok, &waited);
        if (r < 0) return NULL;
        if (!l->reply_base) {  /* (the caller leads the receiver: nobody closes the lane meanwhile) */
            PyErr_SetString(PyExc_ValueError, "CallLane is closed");
            return NULL;
        }
    }
    PyObject *entries = PyList_New(0);
    if (!entries) return NULL;
    for (Py_ssize_t i = 0; i < limit; i++) {
        uint64_t seg = 0, off = 0, call_id = 0;
        if (!fifo_take(f, &seg, &off)) break;
        PyObject *entry = NULL;
        unsigned kind = 0;
        frame_split s;
        if (seg != l->reply_seg || !lane_take_reply(l->reply_base, l->reply_size, l->reply_slot, l->connection_id, off, &kind, &call_id, &s)) {
            entry = take_entry(LANE_OTHER, PyLong_FromUnsignedLongLong(seg), PyLong_FromUnsignedLongLong(off));
        } else {
            PyObject *value;
            int status = lane_settle_reply(&l->marshal, kind, &s, &value);
            /* status < 0, an exception that is not an Exception (e.g. KeyboardInterrupt): it
               propagates, and the replies taken so far are lost, as if their signals were (the
               protocol's retransmission recovers them) */
            if (status >= 0) entry = take_entry(status, PyLong_FromUnsignedLongLong(call_id), value);
        }
        if (!entry || PyList_Append(entries, entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(entries);
            return NULL;
        }
        Py_DECREF(entry);
    }
    return Py_BuildValue("(iKN)", r, (unsigned long long)waited, entries);
}

/* lend(next_id, patience_s): the protocol lends its call ids (nothing else is outstanding). */
static PyObject *CallLane_lend(CallLane *l, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "lend(next_id, patience_s)");
        return NULL;
    }
    unsigned long long next_id = PyLong_AsUnsignedLongLong(args[0]);
    if (next_id == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    double patience = PyFloat_AsDouble(args[1]);
    if (patience == -1.0 && PyErr_Occurred()) return NULL;
    if (l->lent) {
        PyErr_SetString(PyExc_ValueError, "the lane already holds the protocol's state");
        return NULL;
    }
    if (!next_id || !(patience >= 0)) {
        PyErr_SetString(PyExc_ValueError, "lend: call ids start at 1 and the patience is not negative");
        return NULL;
    }
    l->lent = 1;
    l->next_id = next_id;
    l->calls = l->current = 0;
    l->rtt_ns = 0;
    l->patience_s = patience > 1e9 ? 1e9 : patience;
    Py_RETURN_NONE;
}

/* reclaim() -> (next_id, calls, current call id or None, last round trip in s or None), or None
   if nothing is lent; the lane holds nothing afterwards. */
static PyObject *CallLane_reclaim(CallLane *l, PyObject *Py_UNUSED(ignored)) {
    if (!l->lent) Py_RETURN_NONE;
    PyObject *current = l->current ? PyLong_FromUnsignedLongLong(l->current) : Py_NewRef(Py_None);
    PyObject *rtt = l->rtt_ns ? PyFloat_FromDouble((double)l->rtt_ns * 1e-9) : Py_NewRef(Py_None);
    if (!current || !rtt) { Py_XDECREF(current); Py_XDECREF(rtt); return NULL; }
    PyObject *r = Py_BuildValue("(KKNN)", l->next_id, l->calls, current, rtt);
    if (!r) return NULL;
    l->lent = 0;
    l->calls = l->current = 0;
    l->rtt_ns = 0;
    return r;
}

static PyObject *CallLane_close(CallLane *l, PyObject *Py_UNUSED(ignored)) {
    Py_CLEAR(l->request);
    l->reply_base = NULL;
    Py_RETURN_NONE;
}

static PyObject *CallLane_message(CallLane *l, void *Py_UNUSED(closure)) {
    return Py_NewRef(l->message ? l->message : Py_None);
}

static PyObject *CallLane_lent(CallLane *l, void *Py_UNUSED(closure)) { return PyBool_FromLong(l->lent); }

static PyMethodDef CallLane_methods[] = {
    {"call", (PyCFunction)(void (*)(void))CallLane_call, METH_FASTCALL,
     "call(method, args, kwargs, spin_ns, sleep_ok) -> CallResult"},
    {"take", (PyCFunction)(void (*)(void))CallLane_take, METH_FASTCALL,
     "take(limit, spin_ns, timeout_s, sleep_ok) -> (wait status, waited_ns, [(status, a, b), ...])"},
    {"lend", (PyCFunction)(void (*)(void))CallLane_lend, METH_FASTCALL, "lend(next_id, patience_s)"},
    {"reclaim", (PyCFunction)CallLane_reclaim, METH_NOARGS,
     "reclaim() -> (next_id, calls, current call id | None, last rtt s | None) | None"},
    {"close", (PyCFunction)CallLane_close, METH_NOARGS, "forget the channels (before they are unbound)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef CallLane_getset[] = {
    {"message", (getter)CallLane_message, NULL, "the last call's marshalled message (for its adoption)", NULL},
    {"lent", (getter)CallLane_lent, NULL, "whether the lane holds the protocol's state", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CallLaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    NATIVE_TYPE(CallLane),
    .tp_doc = "CallLane(request_writer, fifo, reply_segment_id, reply_base, reply_size, reply_slot, connection_id, "
              "max_payload, packer, unpack, ext_hook)",
    .tp_getset = CallLane_getset,
};

/* pack_direct(packer, message): what both lanes write for a call or a reply before asking the packer
   (lane.h marshal_pack_direct), or None if they leave it to the packer; for the tests that hold it
   to marshal.encode_call and encode_result byte for byte. */
static PyObject *n_pack_direct(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *packer, *message;
    if (!PyArg_ParseTuple(args, "OO:pack_direct", &packer, &message)) return NULL;
    Marshal m = {0};
    if (marshal_init(&m, packer, Py_None, Py_None) < 0) return NULL;
    PyObject *packed = marshal_pack_direct(&m, message);
    marshal_clear(&m);
    return packed || PyErr_Occurred() ? packed : Py_NewRef(Py_None);
}

int machine_overloaded(uint64_t now);  /* sync.c: more runnable tasks than online CPUs (a hint) */

/* overloaded(): whether more tasks are runnable than the machine has CPUs, as the waits see it
   (sync.c, read at most every 2 ms; False when the waits do not know the load) */
static PyObject *n_overloaded(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(machine_overloaded(now_ns()));
}

static PyMethodDef call_lane_functions[] = {
    {"overloaded", n_overloaded, METH_NOARGS,
     "overloaded(): whether more tasks are runnable than CPUs, as the waits see it (rpc/bulk.py work_ns)"},
    {"pack_direct", n_pack_direct, METH_VARARGS,
     "pack_direct(packer, message): the lanes' own packing of a call or reply, or None (the packer's)"},
    {"unpack_plain", lane_unpack_plain, METH_VARARGS,
     "unpack_plain(env, big=None, at=0): the lanes' own unpacking of a plain call or reply, or None (msgpack's)"},
    {NULL, NULL, 0, NULL},
};

int native_add_call_lane(PyObject *module) {
    if (record_ready(&CallResultType, call_result_fields) < 0) return -1;
    return native_add(module, call_lane_functions, (PyTypeObject *const[]){&CallResultType, &CallLaneType, NULL});
}
