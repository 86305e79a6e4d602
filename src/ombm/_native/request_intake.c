/*
 * RequestIntake: the RPC server's serving loop in one native call (paper §4: the no-loss path
 * costs no protocol work). rpc/server.py drives it. serve() waits (spin, then futex sleep) on the
 * server's signal FIFO and takes signals one after another. A signal naming a registered request
 * channel is a request: the frame in that slot goes through THE frame check (frame_take: copied
 * out once, its checksum folded into the copy, every field read from the private copy).
 *
 * The server lane. While a connection's lane is on (lane(): the Python ServerProtocol lent it the
 * highest call id it delivered and how many replies it may still cache), a request that is one
 * whole CALL frame of that connection, newer than every call delivered (call id > last), whose
 * ack does not exceed its call id, is served right here: the call is unmarshalled, its method
 * looked up and run, the result marshalled (or, for anything unusual, the server's Python
 * execute()/finish() does it), and the reply, if it fits one frame, is written into the next
 * reply slot and kept in the lane's reply cache. That serves a synchronous client (each request
 * acks every call before it) and a pipelining one (issue 13: up to a window of calls outstanding,
 * each request acking the oldest it still waits for) alike. The ack releases the cached replies
 * below it, as ServerProtocol.receive_fields does. Such a request changes the protocol state in
 * known ways only (the client's ack, the highest call delivered, one more delivered call and its
 * one-frame reply), so the lane keeps exactly that delta: the ack, the last call, and the calls it
 * delivered that the ack has not released yet with their replies (at most LANE_WINDOW, and at most
 * what the protocol's bounded reply cache still holds: the lane never makes it evict). Anything
 * else (a duplicate or retransmission, a one-way call, a fragment, a stale or bad frame) goes back
 * to Python with that delta (the "handback"), and the protocol applies it before it takes the
 * frame (ServerProtocol.reclaim): the reference semantics stay the protocol's.
 */
#include "fifo.h"
#include "frame.h"
#include "lane.h"
#include "writer.h"

static PyTypeObject ServeResultType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.ServeResult",
    .tp_doc = "What RequestIntake.serve returns. status: a SERVE_* constant; waited_ns: how long the last "
              "wait for a signal took; for SERVE_REQUEST (else None): connection, the request's; fields, the "
              "frame as frame_decode returns it, or None if it failed its checks; handback, the lane's state "
              "(served, replied, last, reply frame or None) if the lane was on; executed, the reply "
              "(payload, error) of a request the lane ran whose reply needs several frames; segment_id, "
              "offset: the signal (SERVE_SIGNAL), else 0.",
    RECORD_TYPE_SLOTS,
};
static const char *const serve_result_fields[] = {"status", "waited_ns", "connection", "fields", "handback",
                                                  "executed", "segment_id", "offset", NULL};

/* A ServeResult without a request (the object fields None). */
static PyObject *serve_result(int status, uint64_t waited_ns, uint64_t seg, uint64_t off) {
    PyObject *fields[8] = {PyLong_FromLong(status), PyLong_FromUnsignedLongLong(waited_ns), Py_NewRef(Py_None),
                           Py_NewRef(Py_None), Py_NewRef(Py_None), Py_NewRef(Py_None),
                           PyLong_FromUnsignedLongLong(seg), PyLong_FromUnsignedLongLong(off)};
    return record_new(&ServeResultType, fields);
}

#define LANE_WINDOW 64  /* the most delivered calls the lane keeps (a pipelining client's window: 32 by default) */

/* A call the lane delivered and the ack has not released: its reply payload (bytes) and kind,
   payload NULL if it was never answered. */
typedef struct {
    unsigned long long id;
    PyObject *payload;
    unsigned kind;
} LaneReply;

typedef struct {
    PyObject_HEAD
    PyObject *conn;           /* the server's connection object, handed back with its frames */
    const unsigned char *base;
    Py_ssize_t size, slot;    /* request channel geometry */
    Writer *reply;            /* the reply channel's writer; NULL: no lane for this connection */
    unsigned long long connection_id;
    Py_ssize_t max_payload;   /* the largest reply payload in one frame */
    PyObject *limit;          /* int: the largest result the client takes (execute's 2nd argument) */
    Py_ssize_t limit_n;       /* the same, as a C integer */
    int active;               /* the lane holds the connection's state */
    unsigned long long last;  /* the highest call id delivered */
    unsigned long long ack;   /* the highest ack of a request the lane served (0: none) */
    unsigned long long served, replied;  /* requests served on the lane since lane() */
    Py_ssize_t room;          /* the most calls `kept` may hold (the protocol's reply cache has room for them) */
    Py_ssize_t count;         /* calls in `kept`, in call id order, none below `ack` */
    LaneReply kept[LANE_WINDOW];
} IntakeEntry;

/* Forget the kept calls below `ack` (the client waits for none of them), oldest first. */
static void lane_release(IntakeEntry *e, unsigned long long ack) {
    Py_ssize_t n = 0;
    for (; n < e->count && e->kept[n].id < ack; n++) Py_CLEAR(e->kept[n].payload);
    if (n) {
        memmove(e->kept, e->kept + n, (size_t)(e->count - n) * sizeof(LaneReply));
        e->count -= n;
    }
}

static int IntakeEntry_traverse(IntakeEntry *e, visitproc visit, void *arg) {
    Py_VISIT(e->conn); Py_VISIT(e->reply); Py_VISIT(e->limit);
    for (Py_ssize_t i = 0; i < e->count; i++) Py_VISIT(e->kept[i].payload);
    return 0;
}
static int IntakeEntry_clear(IntakeEntry *e) {
    Py_CLEAR(e->conn); Py_CLEAR(e->reply); Py_CLEAR(e->limit);
    lane_release(e, ULLONG_MAX);
    return 0;
}

static PyTypeObject IntakeEntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.IntakeEntry",
    .tp_basicsize = sizeof(IntakeEntry),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "one request channel of a RequestIntake (internal)",
    .tp_dealloc = native_dealloc,
    .tp_traverse = (traverseproc)IntakeEntry_traverse,
    .tp_clear = (inquiry)IntakeEntry_clear,
};

typedef struct {
    PyObject_HEAD
    FifoMap *fifo;            /* the server's signal FIFO */
    PyObject *channels;       /* dict: segment id -> IntakeEntry */
    PyObject *kinds;          /* kind byte -> the object frame_decode returns for it */
    /* the server's side of a call (rpc/server.py, rpc/marshal.py) */
    PyObject *methods;        /* dict: method name -> callable */
    PyObject *stats;          /* the server's stats dict: "calls" counts the calls run here */
    Marshal marshal;          /* the call's unmarshaller and the reply's marshaller, this loop's own */
    PyObject *execute;        /* execute(payload, limit) -> (reply payload, error): all of a call, in Python */
    PyObject *finish;         /* finish(result, exception, limit) -> (reply payload, error) */
    PyObject *calls_key, *zero, *one;
    unsigned long long lane_served;  /* requests served and answered on the lane, ever (the `served` attribute) */
    uint64_t linger_ns;       /* the next wait spins this much longer (linger(): a client copies a large reply) */
    FifoMap *peer;            /* the receiver the last reply signalled (its client's), NULL: none; the wait follows it */
} RequestIntake;

static int RequestIntake_init(RequestIntake *x, PyObject *args, PyObject *Py_UNUSED(kw)) {
    PyObject *fifo_o, *kinds, *methods, *stats, *unpack, *ext_hook, *packer, *execute, *finish;
    if (!PyArg_ParseTuple(args, "OO!O!O!OOOOO", &fifo_o, &PyTuple_Type, &kinds, &PyDict_Type, &methods,
                          &PyDict_Type, &stats, &unpack, &ext_hook, &packer, &execute, &finish))
        return -1;
    if (!as_fifo(fifo_o)) return -1;
    if (!PyCallable_Check(unpack) || !PyCallable_Check(execute) || !PyCallable_Check(finish)) {
        PyErr_SetString(PyExc_TypeError, "RequestIntake: unpack, execute and finish must be callable");
        return -1;
    }
    PyObject *calls_key = PyUnicode_InternFromString("calls");
    PyObject *zero = PyLong_FromLong(0), *one = PyLong_FromLong(1);
    PyObject *channels = PyDict_New();
    if (!calls_key || !zero || !one || !channels || marshal_init(&x->marshal, packer, unpack, ext_hook) < 0) {
        Py_XDECREF(calls_key); Py_XDECREF(zero); Py_XDECREF(one); Py_XDECREF(channels);
        return -1;
    }
    Py_XSETREF(x->calls_key, calls_key);
    Py_XSETREF(x->zero, zero);
    Py_XSETREF(x->one, one);
    Py_XSETREF(x->channels, channels);
    Py_XSETREF(x->kinds, Py_NewRef(kinds));
    Py_XSETREF(x->methods, Py_NewRef(methods));
    Py_XSETREF(x->stats, Py_NewRef(stats));
    Py_XSETREF(x->execute, Py_NewRef(execute));
    Py_XSETREF(x->finish, Py_NewRef(finish));
    Py_XSETREF(x->fifo, (FifoMap *)Py_NewRef(fifo_o));
    x->lane_served = 0;
    return 0;
}

static int RequestIntake_traverse(RequestIntake *x, visitproc visit, void *arg) {
    Py_VISIT(x->channels); Py_VISIT(x->kinds); Py_VISIT(x->methods); Py_VISIT(x->stats); Py_VISIT(x->execute);
    Py_VISIT(x->finish); Py_VISIT(x->calls_key); Py_VISIT(x->zero); Py_VISIT(x->one);
    return marshal_traverse(&x->marshal, visit, arg);
}
static int RequestIntake_clear(RequestIntake *x) {
    Py_CLEAR(x->channels); Py_CLEAR(x->kinds); Py_CLEAR(x->methods); Py_CLEAR(x->stats); Py_CLEAR(x->execute);
    Py_CLEAR(x->finish); Py_CLEAR(x->calls_key); Py_CLEAR(x->zero); Py_CLEAR(x->one);
    Py_CLEAR(x->fifo); Py_CLEAR(x->peer);  /* (a FifoMap holds no references) */
    marshal_clear(&x->marshal);
    return 0;
}

/* The exception being raised, normalized, with its traceback attached; the error indicator is
   cleared. */
static PyObject *take_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value) PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* finish(result, exception, limit): the call's reply when it is not a plain result that fits. */
static PyObject *intake_finish(RequestIntake *x, IntakeEntry *e, PyObject *result, PyObject *exc) {
    PyObject *argv[3] = {result ? result : Py_None, exc ? exc : Py_None, e->limit};
    return PyObject_Vectorcall(x->finish, argv, 3, NULL);
}

/* Run the call in `payload` as Server._execute would: -> (reply payload bytes, error flag), or
   NULL with an exception that is not the call's (e.g. KeyboardInterrupt), or None (a new
   reference) for a call of a method the lane does not run (not in `methods`: an unknown one, or
   an `async def` the server runs on its event loop), which goes to the protocol whole (nothing
   ran yet). The common case stays here: unmarshal (as marshal.decode_call), look the method up,
   call it, marshal [0, result]. A request that does not unmarshal to a call goes to execute()
   whole; a method that raised, or a result that does not marshal or fit, to finish(). */
static PyObject *intake_execute(RequestIntake *x, IntakeEntry *e, frame_split *s) {
    PyObject *call = marshal_unpack_split(&x->marshal, s);
    if (!call) {
        if (PyErr_Occurred()) return NULL;
        goto in_python;
    }
    if (!PyList_CheckExact(call) || PyList_GET_SIZE(call) != 3) goto in_python;
    PyObject *name = PyList_GET_ITEM(call, 0), *args = PyList_GET_ITEM(call, 1), *kwargs = PyList_GET_ITEM(call, 2);
    if (!PyUnicode_CheckExact(name) || !PyList_CheckExact(args) || !PyDict_CheckExact(kwargs)) goto in_python;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(kwargs, &pos, &key, &value))
        if (!PyUnicode_CheckExact(key)) goto in_python;
    PyObject *fn = PyDict_GetItemWithError(x->methods, name);  /* borrowed */
    if (!fn) {
        Py_DECREF(call);
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    Py_INCREF(fn);
    PyObject *calls = PyDict_GetItemWithError(x->stats, x->calls_key);  /* borrowed */
    PyObject *more = calls ? PyNumber_Add(calls, x->one) : NULL;
    if (!more || PyDict_SetItem(x->stats, x->calls_key, more) < 0) {
        Py_XDECREF(more);
        Py_DECREF(fn);
        Py_DECREF(call);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "calls");
        return NULL;
    }
    Py_DECREF(more);
    PyObject *result;
    if (PyDict_GET_SIZE(kwargs) == 0) {
        result = PyObject_Vectorcall(fn, ((PyListObject *)args)->ob_item, PyList_GET_SIZE(args), NULL);
    } else {
        PyObject *targs = PyList_AsTuple(args);
        result = targs ? PyObject_Call(fn, targs, kwargs) : NULL;
        Py_XDECREF(targs);
    }
    Py_DECREF(fn);
    Py_DECREF(call);
    if (!result) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;  /* as _execute: only Exception is the call's */
        PyObject *exc = take_exception();
        PyObject *r = intake_finish(x, e, NULL, exc);
        Py_XDECREF(exc);
        return r;
    }
    PyObject *pair = PyList_New(2);  /* [0, result] as marshal.encode_result packs it */
    if (pair) {
        Py_INCREF(x->zero);
        Py_INCREF(result);
        PyList_SET_ITEM(pair, 0, x->zero);
        PyList_SET_ITEM(pair, 1, result);
    }
    PyObject *data = pair ? marshal_pack_direct(&x->marshal, pair) : NULL;  /* a large buffer: copied once */
    if (pair && !data && !PyErr_Occurred()) data = marshal_pack(&x->marshal, pair);
    Py_XDECREF(pair);
    if (!data && PyErr_Occurred()) { Py_DECREF(result); return NULL; }
    if (!data || !PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) > e->limit_n) {
        Py_XDECREF(data);
        PyObject *r = intake_finish(x, e, result, NULL);  /* says why, as the error reply */
        Py_DECREF(result);
        return r;
    }
    Py_DECREF(result);
    PyObject *r = PyTuple_Pack(2, data, Py_False);
    Py_DECREF(data);
    return r;
in_python:
    Py_XDECREF(call);
    PyObject *whole = frame_split_join(s), *done = NULL;
    if (whole) done = PyObject_Vectorcall(x->execute, (PyObject *[]){whole, e->limit}, 2, NULL);
    Py_XDECREF(whole);
    return done;
}

/* add(segment_id, connection, base, size, slot_size, reply_writer, connection_id, max_payload, limit):
   requests on that segment come decoded; reply_writer None: never a lane for it. */
static PyObject *RequestIntake_add(RequestIntake *x, PyObject *args) {
    PyObject *seg, *conn, *writer, *limit;
    unsigned long long base, conn_id;
    Py_ssize_t size, slot, max_payload;
    if (!PyArg_ParseTuple(args, "O!OKnnOKnO!", &PyLong_Type, &seg, &conn, &base, &size, &slot, &writer, &conn_id,
                          &max_payload, &PyLong_Type, &limit))
        return NULL;
    Py_ssize_t limit_n = PyLong_AsSsize_t(limit);
    if (limit_n == -1 && PyErr_Occurred()) return NULL;
    if (!base || slot < TRAILER || size < slot || max_payload < 0 || limit_n < 0) {
        PyErr_SetString(PyExc_ValueError, "RequestIntake.add: bad channel geometry");
        return NULL;
    }
    if (writer != Py_None && !PyObject_TypeCheck(writer, &WriterType)) {
        PyErr_SetString(PyExc_TypeError, "RequestIntake.add: reply_writer must be a Writer or None");
        return NULL;
    }
    IntakeEntry *e = PyObject_GC_New(IntakeEntry, &IntakeEntryType);
    if (!e) return NULL;
    e->conn = Py_NewRef(conn);
    e->base = (const unsigned char *)(uintptr_t)base;
    e->size = size;
    e->slot = slot;
    e->reply = writer == Py_None ? NULL : (Writer *)Py_NewRef(writer);
    e->connection_id = conn_id;
    e->max_payload = max_payload;
    e->limit = Py_NewRef(limit);
    e->limit_n = limit_n;
    e->active = 0;
    e->last = e->ack = e->served = e->replied = 0;
    e->room = e->count = 0;
    PyObject_GC_Track(e);
    int rc = PyDict_SetItem(x->channels, seg, (PyObject *)e);
    Py_DECREF(e);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

/* remove(segment_id): forget it (before its channel is unbound). */
static PyObject *RequestIntake_remove(RequestIntake *x, PyObject *seg) {
    if (PyDict_DelItem(x->channels, seg) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError)) return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static IntakeEntry *intake_entry(RequestIntake *x, PyObject *seg) {
    PyObject *e = PyDict_GetItemWithError(x->channels, seg);  /* borrowed */
    if (!e && !PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "no such request channel");
    return (IntakeEntry *)e;
}

/* The lane's state as the protocol takes it back: (served, replied, ack, last, kept), kept a tuple
   of (call id, reply frame or None) in call id order; the lane is off afterwards. */
static PyObject *lane_handback(IntakeEntry *e) {
    PyObject *kept = PyTuple_New(e->count);
    if (!kept) return NULL;
    for (Py_ssize_t i = 0; i < e->count; i++) {
        LaneReply *k = &e->kept[i];
        PyObject *frame;
        if (k->payload) {  /* the reply cache, framed as the lane wrote it */
            frame_trailer t = {e->connection_id, k->id, 0, (uint32_t)PyBytes_GET_SIZE(k->payload), 0, 0, 1,
                               (uint8_t)k->kind};
            frame = frame_bytes(PyBytes_AS_STRING(k->payload), &t);
            if (!frame) { Py_DECREF(kept); return NULL; }
        } else {
            frame = Py_NewRef(Py_None);
        }
        PyObject *item = Py_BuildValue("(KN)", k->id, frame);
        if (!item) { Py_DECREF(kept); return NULL; }
        PyTuple_SET_ITEM(kept, i, item);
    }
    PyObject *r = Py_BuildValue("(KKKKN)", e->served, e->replied, e->ack, e->last, kept);
    if (!r) return NULL;
    e->active = 0;
    e->served = e->replied = e->ack = 0;
    lane_release(e, ULLONG_MAX);
    return r;
}

/* lane(segment_id, last, room): the protocol lends the lane its state (its highest delivered call
   id, and how many more replies its reply cache takes without evicting one). False (lane stays
   off) if the connection has no reply writer. */
static PyObject *RequestIntake_lane(RequestIntake *x, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "lane(segment_id, last, room)");
        return NULL;
    }
    IntakeEntry *e = intake_entry(x, args[0]);
    if (!e) return NULL;
    unsigned long long last = PyLong_AsUnsignedLongLong(args[1]);
    if (last == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    Py_ssize_t room = PyLong_AsSsize_t(args[2]);
    if (room == -1 && PyErr_Occurred()) return NULL;
    if (e->active) {
        PyErr_SetString(PyExc_ValueError, "the lane already holds this connection's state");
        return NULL;
    }
    if (!e->reply) Py_RETURN_FALSE;
    e->active = 1;
    e->last = last;
    e->ack = e->served = e->replied = 0;
    e->room = room < 0 ? 0 : room < LANE_WINDOW ? room : LANE_WINDOW;
    lane_release(e, ULLONG_MAX);
    Py_RETURN_TRUE;
}

/* take(segment_id) -> the handback (see lane_handback), or None if the lane is off. */
static PyObject *RequestIntake_take(RequestIntake *x, PyObject *seg) {
    IntakeEntry *e = intake_entry(x, seg);
    if (!e) return NULL;
    if (!e->active) Py_RETURN_NONE;
    return lane_handback(e);
}

/* A frame for Python: a SERVE_REQUEST result. `fields` (a new reference) NULL: decode the frame
   of n bytes at b (NULL: not a frame); `executed` borrowed, NULL: None. */
static PyObject *intake_to_python(RequestIntake *x, IntakeEntry *e, const unsigned char *b, Py_ssize_t n,
                                  uint64_t waited, PyObject *fields, PyObject *executed) {
    if (!fields) {
        fields = b ? frame_decode_fields(b, n, x->kinds) : NULL;
        if (!fields) {
            if (PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_ValueError)) return NULL;
                PyErr_Clear();
            }
            fields = Py_NewRef(Py_None);
        }
    }
    PyObject *handback = e->active ? lane_handback(e) : Py_NewRef(Py_None);
    PyObject *result[8] = {PyLong_FromLong(SERVE_REQUEST), PyLong_FromUnsignedLongLong(waited), Py_NewRef(e->conn),
                           fields, handback, Py_NewRef(executed ? executed : Py_None), PyLong_FromLong(0),
                           PyLong_FromLong(0)};
    return record_new(&ServeResultType, result);
}

/* The lane delivered the request t (its ack applied, room checked): the protocol's receive_fields
   and send_reply in one, on the lane's delta. data (borrowed) NULL: never answered. The data reference is kept. */
static void lane_deliver(IntakeEntry *e, const frame_trailer *t, PyObject *data, unsigned kind) {
    e->last = t->message_id;
    e->served++;
    if (e->count >= LANE_WINDOW) return;  /* (never: the room was checked, and a method that took the
                                             lane back meanwhile emptied it) */
    LaneReply *k = &e->kept[e->count++];
    k->id = t->message_id;
    k->payload = data ? Py_NewRef(data) : NULL;
    k->kind = kind;
}

/* frame_fields of a CALL, its whole payload joined again (the split cleared); NULL with an exception. */
static PyObject *intake_fields(RequestIntake *x, const frame_trailer *t, frame_split *s) {
    PyObject *whole = frame_split_join(s);
    frame_split_clear(s);
    if (!whole) return NULL;
    PyObject *fields = frame_fields(PyTuple_GET_ITEM(x->kinds, KIND_CALL), t, whole);
    Py_DECREF(whole);
    return fields;
}

/* One request signal for entry e at offset off: 1 if the lane served it; 0 with *out a new
   SERVE_REQUEST result for Python; -1 with an exception. */
static int intake_request(RequestIntake *x, IntakeEntry *e, uint64_t off, uint64_t waited, PyObject **out) {
    if (off >= (uint64_t)e->size) return (*out = intake_to_python(x, e, NULL, 0, waited, NULL, NULL)) ? 0 : -1;
    Py_ssize_t start = (Py_ssize_t)off / e->slot * e->slot, n = e->slot;
    if (start + n > e->size) return (*out = intake_to_python(x, e, NULL, 0, waited, NULL, NULL)) ? 0 : -1;
    const unsigned char *b = e->base + start;
    if (!e->active || !e->reply->base) return (*out = intake_to_python(x, e, b, n, waited, NULL, NULL)) ? 0 : -1;
    /* The lane's test: one whole CALL of this connection, newer than any delivered, its ack not past
       it, and room to keep it (the ack releases the kept calls below it first). */
    frame_trailer t;
    const char *why;
    frame_split payload;  /* a large bin copied out once, straight into the bytes the argument will be */
    if (frame_take_split(b, n, &t, &why, &payload) < 0 && !why) return -1;
    if (!payload.env || t.frag_count != 1 || t.kind != KIND_CALL || t.connection_id != e->connection_id ||
        t.ack > t.message_id || t.message_id <= e->last) {
        frame_split_clear(&payload);
        return (*out = intake_to_python(x, e, b, n, waited, NULL, NULL)) ? 0 : -1;
    }
    if (t.ack > e->ack) {  /* a request the protocol would take: its ack holds (as in receive_fields) */
        e->ack = t.ack;
        lane_release(e, t.ack);
    }
    if (e->count >= e->room) {
        frame_split_clear(&payload);
        return (*out = intake_to_python(x, e, b, n, waited, NULL, NULL)) ? 0 : -1;
    }
    uint64_t call_id = t.message_id;
    PyObject *executed = intake_execute(x, e, &payload);
    if (executed == Py_None) {  /* not the lane's: the protocol delivers it (the lane's state handed back) */
        Py_DECREF(executed);
        PyObject *fields = intake_fields(x, &t, &payload);
        if (!fields) return -1;
        return (*out = intake_to_python(x, e, b, n, waited, fields, NULL)) ? 0 : -1;
    }
    PyObject *data = NULL;
    int error = -1;
    if (executed && PyTuple_CheckExact(executed) && PyTuple_GET_SIZE(executed) == 2 &&
        PyBytes_CheckExact(PyTuple_GET_ITEM(executed, 0))) {
        data = PyTuple_GET_ITEM(executed, 0);
        error = PyObject_IsTrue(PyTuple_GET_ITEM(executed, 1));
    }
    if (error < 0) {
        /* delivered, never answered (execute raised past the server's own handling, e.g.
           KeyboardInterrupt): a retransmission must not run it again */
        frame_split_clear(&payload);
        Py_XDECREF(executed);
        lane_deliver(e, &t, NULL, 0);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "execute must return (bytes, bool)");
        return -1;
    }
    Py_ssize_t dlen = PyBytes_GET_SIZE(data);
    if (dlen > e->max_payload || dlen + TRAILER > e->reply->unit) {
        /* a reply of several frames: the protocol splits it */
        PyObject *fields = intake_fields(x, &t, &payload);
        if (!fields) { Py_DECREF(executed); return -1; }
        *out = intake_to_python(x, e, b, n, waited, fields, executed);
        Py_DECREF(executed);
        return *out ? 0 : -1;
    }
    frame_split_clear(&payload);
    unsigned kind = error ? KIND_ERROR_REPLY : KIND_REPLY;
    lane_deliver(e, &t, data, kind);  /* the reply cache: sent again if the request comes again */
    e->replied++;
    x->lane_served++;
    Py_DECREF(executed);
    if (writer_send_frame(e->reply, kind, e->connection_id, call_id, 0, PyBytes_AS_STRING(data), dlen) < 0) {
        if (e->reply->base) return -1;
        PyErr_Clear();  /* the method closed the connection (e.g. it stopped the server): lost */
    }
    return 1;
}

/* serve(spin_ns, timeout_s, sleep_ok, learn_ns) -> ServeResult: what Python must see next
   (SERVE_*); timeout_s bounds the whole call. One wake-up serves a batch: every request pending
   in the FIFO (from any number of clients) is served before the call returns SERVE_LEARN to
   report the wait that began the batch (issue 13), so N clients cost the server one wake-up and
   one return to Python per batch, not per call. */
static PyObject *RequestIntake_serve(RequestIntake *x, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "serve(spin_ns, timeout_s, sleep_ok, learn_ns)");
        return NULL;
    }
    uint64_t spin_ns;
    double timeout_s;
    int sleep_ok;
    if (parse_wait_policy(args, 3, &spin_ns, &timeout_s, &sleep_ok) < 0) return NULL;
    unsigned long long learn_ns = PyLong_AsUnsignedLongLong(args[3]);
    if (learn_ns == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    const FifoMap *f = x->fifo;
    uint64_t deadline = now_ns() + (uint64_t)(timeout_s * 1e9);
    uint64_t learnt = 0;  /* a wait the policy should hear of (> learn_ns), told once the batch is served */
    int to_learn = 0;
    for (;;) {
        /* every request pending when the server woke is served before it reports the wait */
        if (to_learn && !fifo_ready(f)) return serve_result(SERVE_LEARN, learnt, 0, 0);
        uint64_t t = now_ns(), waited, linger = x->linger_ns;
        x->linger_ns = 0;
        FifoMap *peer = (FifoMap *)Py_XNewRef(x->peer);  /* (held: the wait reads it without the GIL) */
        int r = wait_signal_for(f, peer, spin_ns + linger, t < deadline ? (double)(deadline - t) * 1e-9 : 0.0,
                                sleep_ok, &waited);
        Py_XDECREF(peer);
        if (r < 0) return NULL;  /* e.g. KeyboardInterrupt */
        uint64_t seg = 0, off = 0;  /* (set when fifo_take returns 1) */
        if (to_learn) waited = learnt;  /* what Python hears: the wait that began this batch */
        if (r != WAIT_READY || !fifo_take(f, &seg, &off))
            return serve_result(r == WAIT_STALLED ? SERVE_STALLED : SERVE_TIMEOUT, waited, 0, 0);
        PyObject *key = PyLong_FromUnsignedLongLong(seg);
        if (!key) return NULL;
        IntakeEntry *e = (IntakeEntry *)PyDict_GetItemWithError(x->channels, key);
        Py_DECREF(key);
        if (!e) {
            if (PyErr_Occurred()) return NULL;
            return serve_result(SERVE_SIGNAL, waited, seg, off);
        }
        Py_INCREF(e);  /* the method it runs may drop the connection */
        PyObject *out = NULL;
        int served = intake_request(x, e, off, waited, &out);
        if (served > 0) Py_XSETREF(x->peer, writer_peer(e->reply));  /* the client the next wait follows */
        Py_DECREF(e);
        if (served <= 0) return out;
        /* (the lingering is the client's expected work, not the policy's to learn from) */
        if (!to_learn && waited > learn_ns + linger) { to_learn = 1; learnt = waited - linger; }
        if (now_ns() >= deadline) return serve_result(to_learn ? SERVE_LEARN : SERVE_TIMEOUT, waited, 0, 0);
    }
}

/* linger(ns): the next wait spins ns longer than the policy's budget (rpc/server.py: the client is
   copying a large reply out of the bulk segment, rpc/bulk.py work_ns). */
static PyObject *RequestIntake_linger(RequestIntake *x, PyObject *arg) {
    unsigned long long ns = PyLong_AsUnsignedLongLong(arg);
    if (ns == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    x->linger_ns = ns < 1000000000ull ? ns : 1000000000ull;  /* at most 1 s */
    Py_RETURN_NONE;
}

static PyMethodDef RequestIntake_methods[] = {
    {"linger", (PyCFunction)RequestIntake_linger, METH_O, "linger(ns): the next wait spins ns longer"},
    {"add", (PyCFunction)RequestIntake_add, METH_VARARGS,
     "add(segment_id, connection, base, size, slot_size, reply_writer, connection_id, max_payload, limit)"},
    {"remove", (PyCFunction)RequestIntake_remove, METH_O, "remove(segment_id)"},
    {"lane", (PyCFunction)(void (*)(void))RequestIntake_lane, METH_FASTCALL,
     "lane(segment_id, last) -> bool: serve that connection's simple requests natively"},
    {"take", (PyCFunction)RequestIntake_take, METH_O, "take(segment_id) -> (served, replied, last, frame) | None"},
    {"serve", (PyCFunction)(void (*)(void))RequestIntake_serve, METH_FASTCALL,
     "serve(spin_ns, timeout_s, sleep_ok, learn_ns) -> ServeResult"},
    {NULL, NULL, 0, NULL},
};

static PyObject *RequestIntake_served(RequestIntake *x, void *Py_UNUSED(closure)) {
    return PyLong_FromUnsignedLongLong(x->lane_served);
}

static PyGetSetDef RequestIntake_getset[] = {
    {"served", (getter)RequestIntake_served, NULL, "requests served and answered on the lane since it was made",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RequestIntakeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    NATIVE_TYPE(RequestIntake),
    .tp_getset = RequestIntake_getset,
    .tp_doc = "RequestIntake(fifo, kinds, methods, stats, unpack, ext_hook, packer, execute, finish): "
              "the RPC server's serving loop and its native lane",
};

int native_add_request_intake(PyObject *module) {
    if (PyType_Ready(&IntakeEntryType) < 0 || record_ready(&ServeResultType, serve_result_fields) < 0) return -1;
    return native_add(module, NULL, (PyTypeObject *const[]){&ServeResultType, &RequestIntakeType, NULL});
}
