/*
 * PipeLane: pipelined calls' (call_async) no-loss path in native code (issue 13 item 2; paper §4:
 * the timer and the rest of the transport cost nothing when nothing is lost). rpc/client.py
 * drives it; call_lane.c is its synchronous sibling, and the frame checks are the same.
 *
 * While nothing is outstanding, the Python ClientProtocol *lends* the lane its call ids
 * (lend(next_id, patience, window)), as it does to the CallLane. From then on
 * call(client, method, args, kwargs, timeout[, ready]) makes the call's future and its record (a
 * PendingCall: the call's completion state, which the client's other paths share), takes the
 * next id, marshals the call with the lane's own msgpack Packer and writes one CALL frame carrying
 * the protocol's ack (the lowest call id still waited for) into the next request slot, or keeps it
 * queued while `window` calls are in flight (the protocol's max_in_flight): exactly the frame
 * ClientProtocol.send_request would write, and the call is kept in a table of at most PIPE_CAP
 * calls (id mod PIPE_CAP). The whole of call_async is this one native call (no Python frame of the
 * future's, no lock: the GIL serializes the lane's methods), which returns None for what the
 * ordinary path must do (nothing lent, the lane closed, a call that does not fit, no room).
 *
 * take(limit, spin_ns, timeout_s, sleep_ok) drains the caller's signal FIFO as CallLane.take does
 * (one wait, then every signal there, bounded): a reply frame that passes THE frame check
 * (frame_take) as a whole REPLY/ERROR_REPLY of this connection to a call in flight in the table
 * completes that call here: the table forgets it (validated once: a second reply to it is then
 * no call of the table), calls queued behind the window are written out, and the future's
 * PendingCall gets the reply (value, or payload and error flag) and done. A future nobody waits
 * on or watches (no condition made, no waking follower, no asyncio pump) is finished here as
 * Future._finish would (its _result and _state); the others are handed to Python (`slow`),
 * which completes them as the ordinary path does. Every other signal is handed back untouched, as
 * CallLane.take hands it (the protocol decides what it is); a reply to a call still queued (the
 * peer's nonsense) is dropped and counted.
 *
 * reclaim() gives the protocol its state back: the next id, the calls made, the last RTT sample,
 * the frames the lane dropped, and every call not completed (id, ack, message, sent time or None,
 * future), which the protocol adopts (ClientProtocol.adopt_pipelined): under its timer from then
 * on. The client reclaims whenever anything else needs the protocol, and when the oldest call in
 * flight waited longer than the patience (oldest_sent): retransmission, timeouts and liveness
 * are the protocol's, never the lane's.
 *
 * The GIL serializes the lane's methods, but marshalling, writing and completing may run Python
 * code (a hook, a finalizer) and so let another thread in: the table is consistent at each such
 * point (an entry is taken out of it before its future is touched; an id before its write).
 */
#include "fifo.h"
#include "frame.h"
#include "lane.h"
#include "writer.h"

#define PIPE_CAP 256  /* the most calls the table holds; their ids span less than this */

/* ---- PendingCall: one call's completion state (rpc/client.py's _Pending subclasses it) */

typedef struct {
    PyObject_HEAD
    PyObject *done, *data, *value, *error, *gone, *future, *wake, *ready, *client;
    unsigned long long call_id;
    double deadline;  /* monotonic s: the call is given up then */
    char watched;     /* someone waits on or watches its future (a condition, waiters or callbacks made) */
} PendingCall;

static PyObject *undecoded, *empty_bytes;  /* value until the reply is unmarshalled; data until a payload */

static int PendingCall_traverse(PendingCall *p, visitproc visit, void *arg) {
    Py_VISIT(p->done); Py_VISIT(p->data); Py_VISIT(p->value); Py_VISIT(p->error); Py_VISIT(p->gone);
    Py_VISIT(p->future); Py_VISIT(p->wake); Py_VISIT(p->ready); Py_VISIT(p->client);
    return 0;  /* (a Python subclass's type is visited by its own tp_traverse) */
}

static int PendingCall_clear(PendingCall *p) {
    Py_CLEAR(p->done); Py_CLEAR(p->data); Py_CLEAR(p->value); Py_CLEAR(p->error); Py_CLEAR(p->gone);
    Py_CLEAR(p->future); Py_CLEAR(p->wake); Py_CLEAR(p->ready); Py_CLEAR(p->client);
    return 0;
}

/* A new record of `type` (PendingCall or a subclass) with every field at its start: not done, no
   data, value undecoded, no error, not gone, no future, follower, pump or client; or NULL. */
static PyObject *pending_new(PyTypeObject *type) {
    PendingCall *p = (PendingCall *)type->tp_alloc(type, 0);
    if (!p) return NULL;
    p->done = Py_NewRef(Py_False); p->data = Py_NewRef(empty_bytes); p->value = Py_NewRef(undecoded);
    p->error = Py_NewRef(Py_False); p->gone = Py_NewRef(Py_False); p->future = Py_NewRef(Py_None);
    p->wake = Py_NewRef(Py_None); p->ready = Py_NewRef(Py_None); p->client = Py_NewRef(Py_None);
    return (PyObject *)p;
}

static PyObject *PendingCall_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "PendingCall() takes no arguments");
        return NULL;
    }
    return pending_new(type);
}

#define PENDING_FIELD(name, doc) {#name, Py_T_OBJECT_EX, offsetof(PendingCall, name), 0, doc}
static PyMemberDef PendingCall_members[] = {
    PENDING_FIELD(done, "the call is over: its reply taken, or its server gone"),
    PENDING_FIELD(data, "the reply's payload, if the drain did not unmarshal it"),
    PENDING_FIELD(value, "the result, if the drain unmarshalled it (UNDECODED until then)"),
    PENDING_FIELD(error, "the payload is an error reply's"),
    PENDING_FIELD(gone, "done because the server stopped or died"),
    PENDING_FIELD(future, "the call_async future the client completes (None for the lane's own)"),
    PENDING_FIELD(wake, "a waiting follower's lock, released when the call is done"),
    PENDING_FIELD(ready, "an asyncio pump's deque: the call id goes there when done"),
    PENDING_FIELD(client, "the client whose call it is (a future's)"),
    {"call_id", Py_T_ULONGLONG, offsetof(PendingCall, call_id), 0, "the call's id (a future's)"},
    {"deadline", Py_T_DOUBLE, offsetof(PendingCall, deadline), 0, "when the call is given up (monotonic s)"},
    {"watched", Py_T_BOOL, offsetof(PendingCall, watched), 0, "its future has a condition, waiters or callbacks"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject PendingCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.PendingCall",
    .tp_basicsize = sizeof(PendingCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_new = PendingCall_new,
    .tp_dealloc = native_dealloc,
    .tp_traverse = (traverseproc)PendingCall_traverse,
    .tp_clear = (inquiry)PendingCall_clear,
    .tp_members = PendingCall_members,
    .tp_doc = "PendingCall(): one call's completion state, shared by the pipelined lane and the client",
};

/* ---- FutureCore: a pipelined call's future's concurrent.futures state, native (rpc/client.py's
   Future subclasses it and concurrent.futures.Future): the lane makes and finishes one without a
   name looked up, and the interpreter reads these fields as it reads __slots__. */

typedef struct {
    PyObject_HEAD
    PyObject *state, *result, *exception, *pending;  /* _state, _result, _exception, _pending */
} FutureCore;

static int FutureCore_traverse(FutureCore *f, visitproc visit, void *arg) {
    Py_VISIT(f->state); Py_VISIT(f->result); Py_VISIT(f->exception); Py_VISIT(f->pending);
    return 0;  /* (a Python subclass's dict and type are visited by its own tp_traverse) */
}

static int FutureCore_clear(FutureCore *f) {
    Py_CLEAR(f->state); Py_CLEAR(f->result); Py_CLEAR(f->exception); Py_CLEAR(f->pending);
    return 0;
}

/* A new future of `type` (FutureCore or a subclass): no result, no exception, no state or call yet. */
static PyObject *future_new(PyTypeObject *type) {
    FutureCore *f = (FutureCore *)type->tp_alloc(type, 0);
    if (!f) return NULL;
    f->result = Py_NewRef(Py_None);
    f->exception = Py_NewRef(Py_None);
    return (PyObject *)f;
}

static PyObject *FutureCore_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kw)) {
    return future_new(type);  /* (the arguments are the subclass's __init__'s) */
}

#define FUTURE_FIELD(name, field, doc) {name, Py_T_OBJECT_EX, offsetof(FutureCore, field), 0, doc}
static PyMemberDef FutureCore_members[] = {
    FUTURE_FIELD("_state", state, "concurrent.futures' state of the future"),
    FUTURE_FIELD("_result", result, "its result, once finished"),
    FUTURE_FIELD("_exception", exception, "its exception, once finished"),
    FUTURE_FIELD("_pending", pending, "the call's PendingCall"),
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FutureCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.FutureCore",
    .tp_basicsize = sizeof(FutureCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_new = FutureCore_new,
    .tp_dealloc = native_dealloc,
    .tp_traverse = (traverseproc)FutureCore_traverse,
    .tp_clear = (inquiry)FutureCore_clear,
    .tp_members = FutureCore_members,
    .tp_doc = "FutureCore(): a pipelined call's future's state (_state, _result, _exception, _pending)",
};

/* ---- PipeLane */

typedef struct {
    unsigned long long id, ack;  /* id 0: a free entry */
    PyObject *message;           /* the marshalled call (for the protocol, if reclaimed) */
    PyObject *future;            /* rpc.client.Future */
    uint64_t sent_ns;            /* CLOCK_MONOTONIC when written; 0 while queued behind the window */
} PipeCall;

typedef struct {
    PyObject_HEAD
    Writer *request;           /* the request channel's writer; NULL once closed */
    FifoMap *fifo;             /* the caller's signal FIFO */
    unsigned long long reply_seg;
    const unsigned char *reply_base;
    Py_ssize_t reply_size, reply_slot;
    unsigned long long connection_id;
    Py_ssize_t max_payload;
    Marshal marshal;
    PyObject *running, *pending_state, *finished;  /* concurrent.futures' state constants */
    PyTypeObject *future_type, *pending_type;  /* rpc.client.Future and _Pending, which call() makes */
    PyObject *timer;                           /* the retransmission timer, kicked when a call goes out */
    /* the protocol state lent by lend(), given back by reclaim() */
    int lent;
    unsigned long long next_id, calls, oldest, bad;  /* oldest: the lowest id in the table (next_id: none) */
    unsigned long long next_launch;  /* the calls from it to next_id wait behind the window (launched in id order) */
    Py_ssize_t window, count, in_flight;
    uint64_t rtt_ns;           /* the last RTT sample taken, 0 if none since lend() */
    double patience_s;
    PipeCall table[PIPE_CAP];
} PipeLane;

static PyObject *s_busy, *s_kick;

static int PipeLane_init(PipeLane *l, PyObject *args, PyObject *Py_UNUSED(kw)) {
    PyObject *writer, *fifo_o, *packer, *unpack, *ext_hook, *running, *pending_state, *finished, *timer;
    PyTypeObject *future_type, *pending_type;
    unsigned long long reply_seg, reply_base, conn;
    Py_ssize_t reply_size, reply_slot, max_payload;
    if (!PyArg_ParseTuple(args, "O!OKKnnKnOOOOOOO!O!O", &WriterType, &writer, &fifo_o, &reply_seg, &reply_base,
                          &reply_size, &reply_slot, &conn, &max_payload, &packer, &unpack, &ext_hook, &running,
                          &pending_state, &finished, &PyType_Type, &future_type, &PyType_Type, &pending_type, &timer))
        return -1;
    if (!PyType_IsSubtype(pending_type, &PendingCallType) || !PyType_IsSubtype(future_type, &FutureCoreType)) {
        PyErr_SetString(PyExc_TypeError, "PipeLane: the future and pending types must subclass FutureCore and "
                        "PendingCall");
        return -1;
    }
    if (lane_check_ends("PipeLane", ((Writer *)writer)->unit, max_payload, fifo_o, reply_base, reply_size, reply_slot,
                        unpack) < 0)
        return -1;
    if (marshal_init(&l->marshal, packer, unpack, ext_hook) < 0) return -1;
    Py_XSETREF(l->running, Py_NewRef(running));
    Py_XSETREF(l->pending_state, Py_NewRef(pending_state));
    Py_XSETREF(l->finished, Py_NewRef(finished));
    Py_XSETREF(l->future_type, (PyTypeObject *)Py_NewRef(future_type));
    Py_XSETREF(l->pending_type, (PyTypeObject *)Py_NewRef(pending_type));
    Py_XSETREF(l->timer, Py_NewRef(timer));
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

static int PipeLane_traverse(PipeLane *l, visitproc visit, void *arg) {
    Py_VISIT(l->request); Py_VISIT(l->running); Py_VISIT(l->pending_state); Py_VISIT(l->finished);
    Py_VISIT(l->future_type); Py_VISIT(l->pending_type); Py_VISIT(l->timer);
    for (int i = 0; i < PIPE_CAP; i++) { Py_VISIT(l->table[i].message); Py_VISIT(l->table[i].future); }
    return marshal_traverse(&l->marshal, visit, arg);
}

static int PipeLane_clear(PipeLane *l) {
    Py_CLEAR(l->request); Py_CLEAR(l->fifo); Py_CLEAR(l->running); Py_CLEAR(l->pending_state); Py_CLEAR(l->finished);
    Py_CLEAR(l->future_type); Py_CLEAR(l->pending_type); Py_CLEAR(l->timer);
    for (int i = 0; i < PIPE_CAP; i++) { Py_CLEAR(l->table[i].message); Py_CLEAR(l->table[i].future); }
    marshal_clear(&l->marshal);
    return 0;
}

/* The table's entry of call `id`, or NULL. */
static PipeCall *pipe_find(PipeLane *l, unsigned long long id) {
    PipeCall *c = &l->table[id % PIPE_CAP];
    return id && c->id == id ? c : NULL;
}

/* A future queued until now (PENDING) runs: 0, or -1 with an exception. Only a PENDING one: the
   write before may have run Python code, and the call been reclaimed and finished meanwhile. */
static int pipe_running(PipeLane *l, PyObject *future) {
    if (!PyObject_TypeCheck(future, &FutureCoreType)) {
        PyErr_SetString(PyExc_TypeError, "a pipelined call's future must be a FutureCore");
        return -1;
    }
    FutureCore *f = (FutureCore *)future;
    if (f->state == l->pending_state) Py_SETREF(f->state, Py_NewRef(l->running));  /* (a str: no code runs) */
    return 0;
}

/* Write a call's frame: 0, or -1 with an exception (the call stays queued). Its future runs. */
static int pipe_launch(PipeLane *l, PipeCall *c) {
    /* sent before the write, which may run Python code: another thread's drain then sees it in
       flight (and writes it no second time) */
    unsigned long long id = c->id;
    PyObject *message = Py_NewRef(c->message), *future = Py_NewRef(c->future);
    c->sent_ns = now_ns();
    l->in_flight++;
    int rc = writer_send_frame(l->request, KIND_CALL, l->connection_id, id, c->ack, PyBytes_AS_STRING(message),
                               PyBytes_GET_SIZE(message));
    Py_DECREF(message);
    if (rc < 0 && c->id == id && c->sent_ns) {  /* not written: queued again (if still in the table) */
        c->sent_ns = 0;
        l->in_flight--;
    }
    if (rc == 0) rc = pipe_running(l, future);
    Py_DECREF(future);
    return rc;
}

/* Write the calls queued behind the window, oldest first, while it has room: 0, or -1. */
static int pipe_fill(PipeLane *l) {
    while (l->next_launch < l->next_id && l->in_flight < l->window) {
        PipeCall *c = pipe_find(l, l->next_launch);
        if (c && !c->sent_ns) {
            l->next_launch++;  /* (before the write: Python code may run in it, a drain fill meanwhile) */
            if (pipe_launch(l, c) < 0) {
                if (c->id && !c->sent_ns && l->next_launch > c->id) l->next_launch = c->id;
                return -1;
            }
        } else {
            l->next_launch++;
        }
    }
    return 0;
}

/* The entry leaves the table: its future (a new reference) in *future. */
static void pipe_forget(PipeLane *l, PipeCall *c, PyObject **future) {
    *future = c->future;
    c->future = NULL;
    Py_CLEAR(c->message);
    if (c->sent_ns) l->in_flight--;
    c->id = 0;
    c->sent_ns = 0;
    l->count--;
    while (l->oldest < l->next_id && !pipe_find(l, l->oldest)) l->oldest++;
}

/* lend(next_id, patience_s, window, calls): the protocol lends its call ids with the calls it has
   outstanding, [(id, ack, message, sent s | None, future), ...] in id order (those sent first): as
   reclaim() gives them back (ClientProtocol.lend_pipelined). */
static PyObject *PipeLane_lend(PipeLane *l, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "lend(next_id, patience_s, window, calls: list)");
        return NULL;
    }
    unsigned long long next_id = PyLong_AsUnsignedLongLong(args[0]);
    if (next_id == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    double patience = PyFloat_AsDouble(args[1]);
    if (patience == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t window = PyLong_AsSsize_t(args[2]);
    if (window == -1 && PyErr_Occurred()) return NULL;
    if (l->lent || l->count) {
        PyErr_SetString(PyExc_ValueError, "the lane already holds the protocol's state");
        return NULL;
    }
    if (!next_id || !(patience >= 0) || window < 1) {
        PyErr_SetString(PyExc_ValueError, "lend: call ids start at 1, the patience is not negative, the window >= 1");
        return NULL;
    }
    PyObject *calls = args[3];
    Py_ssize_t n = PyList_GET_SIZE(calls), sent = 0;
    unsigned long long last = 0, first = n ? 0 : next_id;
    for (Py_ssize_t i = 0; i < n; i++) {  /* checked whole before anything is kept */
        PyObject *item = PyList_GET_ITEM(calls, i), *message, *at, *future;
        unsigned long long id, ack;
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "KKO!OO", &id, &ack, &PyBytes_Type, &message, &at, &future))
            return NULL;
        if (!i) first = id;
        if (id <= last || id >= next_id || next_id - first >= PIPE_CAP || !ack || ack > id ||
            PyBytes_GET_SIZE(message) > l->max_payload ||
            (at == Py_None ? 0 : !PyFloat_CheckExact(at) || sent++ != i)) {
            PyErr_SetString(PyExc_ValueError, "lend: the calls do not fit the lane (id order, sent first, one frame)");
            return NULL;
        }
        last = id;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(calls, i);
        unsigned long long id = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 0));
        PyObject *at = PyTuple_GET_ITEM(item, 3);
        PipeCall *c = &l->table[id % PIPE_CAP];
        c->id = id;
        c->ack = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 1));
        Py_XSETREF(c->message, Py_NewRef(PyTuple_GET_ITEM(item, 2)));
        Py_XSETREF(c->future, Py_NewRef(PyTuple_GET_ITEM(item, 4)));
        double t = at == Py_None ? 0.0 : PyFloat_AS_DOUBLE(at);
        c->sent_ns = at == Py_None ? 0 : t > 0 ? (uint64_t)(t * 1e9) : 1;
    }
    l->lent = 1;
    l->next_id = next_id;
    l->oldest = first;
    l->next_launch = n > sent ? PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(PyList_GET_ITEM(calls, sent), 0)) : next_id;
    l->count = n;
    l->calls = l->bad = 0;
    l->in_flight = sent;
    l->window = window < PIPE_CAP ? window : PIPE_CAP;
    l->rtt_ns = 0;
    l->patience_s = patience > 1e9 ? 1e9 : patience;
    Py_RETURN_NONE;
}

/* The call's marshalled message, if the lane takes it: a new reference; NULL with no exception if
   the ordinary path must make it (nothing lent, the lane closed, no room, a call that does not
   marshal here or fit one frame), NULL with an exception if packing raised one. */
static PyObject *pipe_message(PipeLane *l, PyObject *method, PyObject *args, PyObject *kwargs) {
    if (!l->lent || !l->request || !PyUnicode_Check(method) || !PyTuple_Check(args) || !PyDict_Check(kwargs) ||
        l->count >= PIPE_CAP || l->next_id + 1 - l->oldest >= PIPE_CAP)
        return NULL;
    PyObject *triple = PyList_New(3);
    PyObject *positional = triple ? PySequence_List(args) : NULL;
    if (!positional) {
        Py_XDECREF(triple);
        return NULL;
    }
    PyList_SET_ITEM(triple, 0, Py_NewRef(method));
    PyList_SET_ITEM(triple, 1, positional);
    PyList_SET_ITEM(triple, 2, Py_NewRef(kwargs));
    PyObject *message = marshal_pack_direct(&l->marshal, triple);
    if (!message && !PyErr_Occurred()) message = marshal_pack(&l->marshal, triple);
    Py_DECREF(triple);
    /* (packing may have run Python code: lent, open and room again) */
    if (message && (!PyBytes_CheckExact(message) || PyBytes_GET_SIZE(message) > l->max_payload || !l->lent ||
                    !l->request || l->count >= PIPE_CAP || l->next_id + 1 - l->oldest >= PIPE_CAP))
        Py_CLEAR(message);
    return message;
}

/* The call's future (a Future made without its __init__: its state, and its PendingCall with the
   client, call id, deadline and asyncio pump): a new reference, or NULL. */
static PyObject *pipe_future(PipeLane *l, PyObject *client, unsigned long long id, double deadline,
                             PyObject *ready) {
    PyObject *pending = pending_new(l->pending_type);
    if (!pending) return NULL;
    PendingCall *p = (PendingCall *)pending;
    Py_SETREF(p->client, Py_NewRef(client));
    Py_SETREF(p->ready, Py_NewRef(ready));
    p->call_id = id;
    p->deadline = deadline;
    PyObject *future = future_new(l->future_type);
    if (!future) {
        Py_DECREF(pending);
        return NULL;
    }
    ((FutureCore *)future)->state = Py_NewRef(l->running);
    ((FutureCore *)future)->pending = pending;  /* (the reference handed over) */
    return future;
}

/* call(client, method, args, kwargs, timeout[, ready]) -> Future, or None (nothing done: the
   ordinary path makes the call). The call's id is taken, its frame written (or queued behind
   the window: its future is then pending, and running once written), and, for the only call in
   the table, the timer kicked if it idles. A timeout shorter than the lane's patience is the protocol's (None). */
static PyObject *PipeLane_call(PipeLane *l, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 && nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "call(client, method, args, kwargs, timeout[, ready])");
        return NULL;
    }
    double timeout = PyFloat_AsDouble(args[4]);
    if (timeout == -1.0 && PyErr_Occurred()) return NULL;
    if (!(timeout >= l->patience_s)) Py_RETURN_NONE;
    PyObject *message = pipe_message(l, args[1], args[2], args[3]);
    if (!message) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    unsigned long long id = l->next_id;
    PyObject *future = pipe_future(l, args[0], id, (double)now_ns() * 1e-9 + timeout, nargs == 6 ? args[5] : Py_None);
    if (!future) {
        Py_DECREF(message);
        return NULL;
    }
    if (!l->lent || l->next_id != id || !l->request || l->count >= PIPE_CAP ||
        l->next_id + 1 - l->oldest >= PIPE_CAP) {  /* (making it may have run Python code: a collection) */
        Py_DECREF(message);
        Py_DECREF(future);
        Py_RETURN_NONE;
    }
    PipeCall *c = &l->table[id % PIPE_CAP];
    c->id = id;
    c->ack = l->count ? l->oldest : id;  /* the lowest call id still waited for, as send_request acks */
    c->message = message;
    c->future = Py_NewRef(future);
    c->sent_ns = 0;
    l->next_id = id + 1;
    l->count++;
    l->calls++;
    /* launched in call id order, after any call queued before it, while the window has room (its
       future is made running; one that stays queued is pending, until pipe_launch) */
    int rc = pipe_fill(l);
    if (rc == 0 && c->id == id && !c->sent_ns) Py_SETREF(((FutureCore *)future)->state, Py_NewRef(l->pending_state));
    if (rc < 0) {  /* (a write failed): this call, if never sent, is forgotten; the others stay */
        if (c->id == id && !c->sent_ns) {
            PyObject *taken;
            pipe_forget(l, c, &taken);
            Py_XDECREF(taken);
        }
        Py_DECREF(future);
        return NULL;
    }
    if (l->count > 1) return future;  /* the timer ticks busy while the lane holds calls (Client._tick) */
    PyObject *busy = PyObject_GetAttr(l->timer, s_busy);  /* the first: `if not timer.busy: timer.kick()` */
    int idle = busy ? busy != Py_True : -1;
    Py_XDECREF(busy);
    PyObject *kicked = idle > 0 ? PyObject_CallMethodNoArgs(l->timer, s_kick) : NULL;
    Py_XDECREF(kicked);
    if (idle < 0 || (idle > 0 && !kicked)) {  /* (the call is in the table: the protocol has it if reclaimed) */
        Py_DECREF(future);
        return NULL;
    }
    return future;
}

/* Give `future` its reply: its PendingCall's value (status LANE_VALUE) or data and error flag, and
   done; then finish it here if nobody waits on or watches it, else append it to `slow`. 0, or -1
   with an exception. No Python code runs between the call's done and the look at its waiters. */
static int pipe_complete(PipeLane *l, PyObject *future, int status, PyObject *value, PyObject *slow) {
    FutureCore *f = (FutureCore *)future;
    if (!PyObject_TypeCheck(future, &FutureCoreType) || !f->pending ||
        !PyObject_TypeCheck(f->pending, &PendingCallType)) {  /* (only Python code of the user's could) */
        PyErr_SetString(PyExc_TypeError, "a pipelined call's future lost its PendingCall");
        return -1;
    }
    PendingCall *p = (PendingCall *)f->pending;
    /* (the old values released below are bools, None, b"" or UNDECODED: no code runs) */
    if (status == LANE_VALUE) {
        Py_XSETREF(p->value, Py_NewRef(value));
    } else {
        Py_XSETREF(p->data, Py_NewRef(value));
        Py_XSETREF(p->error, Py_NewRef(status == LANE_ERROR_REPLY ? Py_True : Py_False));
    }
    int plain = !p->watched && (!p->wake || p->wake == Py_None) && (!p->ready || p->ready == Py_None) &&
                status == LANE_VALUE;
    Py_XSETREF(p->done, Py_NewRef(Py_True));
    if (!plain) return PyList_Append(slow, future);
    /* Future._finish without a condition: its state only ever moves on to done (cancelled or
       finished meanwhile: as _finish, nothing) */
    if (f->state == l->running || f->state == l->pending_state) {
        PyObject *old = f->result;
        f->result = Py_NewRef(value);
        Py_SETREF(f->state, Py_NewRef(l->finished));
        Py_XDECREF(old);  /* (None, as made: last, when the future is consistent) */
    }
    return 0;
}

/* One entry of take(): (status, a, b), the references stolen (NULL: an exception is set). */
static PyObject *pipe_entry(int status, PyObject *a, PyObject *b) {
    if (!a || !b) { Py_XDECREF(a); Py_XDECREF(b); return NULL; }
    return Py_BuildValue("(iNN)", status, a, b);
}

/* take(limit, spin_ns, timeout_s, sleep_ok) -> (wait status, waited_ns, entries, slow, taken): see
   the file's comment; entries as CallLane.take's, slow the futures completed here that Python must
   finish (Future._complete) or whose waiters it must wake, taken the signals taken. */
static PyObject *PipeLane_take(PipeLane *l, PyObject *const *args, Py_ssize_t nargs) {
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
        PyErr_SetString(PyExc_ValueError, "PipeLane is closed");
        return NULL;
    }
    const FifoMap *f = l->fifo;
    if (timeout_s > 0) {
        FifoMap *peer = l->in_flight ? writer_peer(l->request) : NULL;  /* held while waiting */
        r = wait_signal_for(f, peer, spin_ns, timeout_s, sleep_ok, &waited);
        Py_XDECREF(peer);
        if (r < 0) return NULL;
        if (!l->reply_base) {
            PyErr_SetString(PyExc_ValueError, "PipeLane is closed");
            return NULL;
        }
    }
    PyObject *entries = PyList_New(0), *slow = PyList_New(0);
    if (!entries || !slow) goto fail;
    int sampled = 0;
    Py_ssize_t i;
    for (i = 0; i < limit; i++) {
        uint64_t seg = 0, off = 0, call_id = 0;
        if (!fifo_take(f, &seg, &off)) break;
        unsigned kind = 0;
        frame_split s;
        if (seg != l->reply_seg || !lane_take_reply(l->reply_base, l->reply_size, l->reply_slot, l->connection_id, off, &kind, &call_id, &s)) {
            PyObject *entry = pipe_entry(LANE_OTHER, PyLong_FromUnsignedLongLong(seg),
                                         PyLong_FromUnsignedLongLong(off));
            if (!entry || PyList_Append(entries, entry) < 0) { Py_XDECREF(entry); goto fail; }
            Py_DECREF(entry);
            continue;
        }
        PipeCall *c = l->lent ? pipe_find(l, call_id) : NULL;
        if (c && !c->sent_ns) {  /* a reply to a call never sent: the peer's nonsense */
            frame_split_clear(&s);
            l->bad++;
            continue;
        }
        PyObject *future = NULL;
        if (c) {
            if (!sampled) {  /* one RTT sample per drain: its oldest call's (ClientProtocol.complete) */
                uint64_t t = now_ns();
                l->rtt_ns = t > c->sent_ns ? t - c->sent_ns : 1;
                sampled = 1;
            }
            pipe_forget(l, c, &future);
            if (pipe_fill(l) < 0) { Py_DECREF(future); frame_split_clear(&s); goto fail; }
        }
        PyObject *value;
        int status = lane_settle_reply(&l->marshal, kind, &s, &value);
        if (status < 0) {  /* not an Exception (e.g. KeyboardInterrupt): as if the reply were lost */
            Py_XDECREF(future);
            goto fail;
        }
        if (future) {
            int rc = pipe_complete(l, future, status, value, slow);
            Py_DECREF(future);
            Py_DECREF(value);
            if (rc < 0) goto fail;
        } else {
            PyObject *entry = pipe_entry(status, PyLong_FromUnsignedLongLong(call_id), value);
            if (!entry || PyList_Append(entries, entry) < 0) { Py_XDECREF(entry); goto fail; }
            Py_DECREF(entry);
        }
    }
    return Py_BuildValue("(iKNNn)", r, (unsigned long long)waited, entries, slow, i);
fail:
    Py_XDECREF(entries);
    Py_XDECREF(slow);
    return NULL;
}

/* reclaim() -> (next_id, calls, last rtt s | None, bad, [(id, ack, message, sent s | None, future), ...]
   in id order), or None if nothing is lent; the lane holds nothing afterwards. */
static PyObject *PipeLane_reclaim(PipeLane *l, PyObject *Py_UNUSED(ignored)) {
    if (!l->lent) Py_RETURN_NONE;
    PyObject *outstanding = PyList_New(0);
    if (!outstanding) return NULL;
    for (unsigned long long id = l->oldest; id < l->next_id; id++) {
        PipeCall *c = pipe_find(l, id);
        if (!c) continue;
        PyObject *sent = c->sent_ns ? PyFloat_FromDouble((double)c->sent_ns * 1e-9) : Py_NewRef(Py_None);
        PyObject *item = sent ? Py_BuildValue("(KKONO)", c->id, c->ack, c->message, sent, c->future) : NULL;
        if (!item || PyList_Append(outstanding, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(outstanding);
            return NULL;
        }
        Py_DECREF(item);
    }
    PyObject *rtt = l->rtt_ns ? PyFloat_FromDouble((double)l->rtt_ns * 1e-9) : Py_NewRef(Py_None);
    PyObject *r = rtt ? Py_BuildValue("(KKNKN)", l->next_id, l->calls, rtt, l->bad, outstanding) : NULL;
    if (!r) {
        if (!rtt) Py_DECREF(outstanding);
        return NULL;
    }
    for (int i = 0; i < PIPE_CAP; i++) {
        PipeCall *c = &l->table[i];
        c->id = 0;
        c->sent_ns = 0;
        Py_CLEAR(c->message);
        Py_CLEAR(c->future);
    }
    l->lent = 0;
    l->count = l->in_flight = 0;
    l->calls = l->bad = 0;
    l->rtt_ns = 0;
    return r;
}

static PyObject *PipeLane_close(PipeLane *l, PyObject *Py_UNUSED(ignored)) {
    Py_CLEAR(l->request);  /* (the table stays, for reclaim) */
    l->reply_base = NULL;
    Py_RETURN_NONE;
}

static PyObject *PipeLane_lent(PipeLane *l, void *Py_UNUSED(closure)) { return PyBool_FromLong(l->lent); }

static PyObject *PipeLane_outstanding(PipeLane *l, void *Py_UNUSED(closure)) { return PyLong_FromSsize_t(l->count); }

static PyObject *PipeLane_patience(PipeLane *l, void *Py_UNUSED(closure)) { return PyFloat_FromDouble(l->patience_s); }

/* the oldest call in flight's send time (monotonic s), None if none is */
static PyObject *PipeLane_oldest_sent(PipeLane *l, void *Py_UNUSED(closure)) {
    for (unsigned long long id = l->oldest; l->in_flight && id < l->next_id; id++) {
        PipeCall *c = pipe_find(l, id);
        if (c && c->sent_ns) return PyFloat_FromDouble((double)c->sent_ns * 1e-9);
    }
    Py_RETURN_NONE;
}

static PyMethodDef PipeLane_methods[] = {
    {"lend", (PyCFunction)(void (*)(void))PipeLane_lend, METH_FASTCALL, "lend(next_id, patience_s, window)"},
    {"call", (PyCFunction)(void (*)(void))PipeLane_call, METH_FASTCALL,
     "call(client, method, args, kwargs, timeout[, ready]) -> Future | None (None: the ordinary path's)"},
    {"take", (PyCFunction)(void (*)(void))PipeLane_take, METH_FASTCALL,
     "take(limit, spin_ns, timeout_s, sleep_ok) -> (wait status, waited_ns, [(status, a, b), ...], [future, ...], "
     "taken)"},
    {"reclaim", (PyCFunction)PipeLane_reclaim, METH_NOARGS,
     "reclaim() -> (next_id, calls, last rtt s | None, bad, [(id, ack, message, sent s | None, future), ...]) | None"},
    {"close", (PyCFunction)PipeLane_close, METH_NOARGS, "forget the channels (before they are unbound)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef PipeLane_getset[] = {
    {"lent", (getter)PipeLane_lent, NULL, "whether the lane holds the protocol's state", NULL},
    {"outstanding", (getter)PipeLane_outstanding, NULL, "the calls in the table (in flight or queued)", NULL},
    {"patience", (getter)PipeLane_patience, NULL, "the patience lent (s)", NULL},
    {"oldest_sent", (getter)PipeLane_oldest_sent, NULL, "the oldest call in flight's send time (s), or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PipeLaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    NATIVE_TYPE(PipeLane),
    .tp_doc = "PipeLane(request_writer, fifo, reply_segment_id, reply_base, reply_size, reply_slot, connection_id, "
              "max_payload, packer, unpack, ext_hook, RUNNING, PENDING, FINISHED, Future, _Pending, timer)",
    .tp_getset = PipeLane_getset,
};

int native_add_pipe_lane(PyObject *module) {
    const char *names[] = {"busy", "kick"};
    PyObject **slots[] = {&s_busy, &s_kick};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!(*slots[i] = PyUnicode_InternFromString(names[i]))) return -1;
    if (!(empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) ||
        !(undecoded = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type)))
        return -1;
    if (PyModule_AddIntConstant(module, "PIPE_CAP", PIPE_CAP) < 0 ||
        PyModule_AddObjectRef(module, "UNDECODED", undecoded) < 0)
        return -1;
    return native_add(module, NULL, (PyTypeObject *const[]){&PipeLaneType, &PendingCallType, &FutureCoreType, NULL});
}
