/*
 * The signal FIFO for Python (paper §3.1.2: the per-processor signal FIFO, loss when full): the
 * validated mapping (FifoMap), push, fan-out, pop, retire a dead producer's cell, wait,
 * wait-and-pop. The ring itself (push, take, fan-out) is in fifo.h, inline for the writer and the
 * lanes; the wait is in sync.c.
 */
#include "fifo.h"

#include <pthread.h>
#include <stdio.h>

/* ---------------------------------------------------------------- the mapping */

/* FifoMap(mapping, capacity): `mapping` a writable buffer (the FIFO's mmap) at least
   FIFO_CELLS + capacity * CELL_SIZE bytes long, `capacity` a power of two in [2, 2^20]: the
   values the opener validated (core/fifo.py), never read from the file again. */
static int FifoMap_init(FifoMap *m, PyObject *args, PyObject *Py_UNUSED(kw)) {
    PyObject *mapping;
    unsigned long long capacity;
    if (!PyArg_ParseTuple(args, "OK", &mapping, &capacity)) return -1;
    if (capacity < 2 || capacity > (1u << 20) || (capacity & (capacity - 1))) {
        PyErr_SetString(PyExc_ValueError, "FifoMap: capacity must be a power of two between 2 and 2**20");
        return -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(mapping, &view, PyBUF_WRITABLE) < 0) return -1;
    if (view.len < (Py_ssize_t)(FIFO_CELLS + capacity * CELL_SIZE) || ((uintptr_t)view.buf & 63)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "FifoMap: the mapping is too short for that capacity (or not aligned)");
        return -1;
    }
    if (m->view.obj) PyBuffer_Release(&m->view);
    m->view = view;
    m->base = (uintptr_t)view.buf;
    m->mask = capacity - 1;
    m->size = view.len;
    return 0;
}

static void FifoMap_dealloc(FifoMap *m) {
    if (m->view.obj) PyBuffer_Release(&m->view);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyObject *FifoMap_get_address(FifoMap *m, void *Py_UNUSED(c)) {
    return PyLong_FromUnsignedLongLong((unsigned long long)m->base);
}

static PyObject *FifoMap_get_capacity(FifoMap *m, void *Py_UNUSED(c)) {
    return PyLong_FromUnsignedLongLong((unsigned long long)m->mask + 1);
}

static PyGetSetDef FifoMap_getset[] = {
    {"address", (getter)FifoMap_get_address, NULL, "the mapping's first byte", NULL},
    {"capacity", (getter)FifoMap_get_capacity, NULL, "the validated capacity (cells)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject FifoMapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.FifoMap",
    .tp_basicsize = sizeof(FifoMap),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FifoMap_init,
    .tp_dealloc = (destructor)FifoMap_dealloc,
    .tp_getset = FifoMap_getset,
    .tp_doc = "FifoMap(mapping, capacity): a signal FIFO's mapping and the geometry validated at open",
};

/* ---------------------------------------------------------------- identity and liveness */

uint64_t fifo_me = 0;
_Atomic unsigned long long fifo_corrupt = 0;

/* pid's state letter and start time (clock ticks since boot) from /proc: 1, 0 if there is no such
   process, -1 if it cannot be told (no /proc, no permission). As core/namespace.py reads them. */
static int proc_stat(long pid, char *state, unsigned long long *start) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *fp = fopen(path, "re");
    if (!fp) return errno == ENOENT || errno == ESRCH ? 0 : -1;
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = 0;
    char *p = strrchr(buf, ')');  /* the command name is parenthesised and may hold anything */
    if (!p || sscanf(p + 2, "%c", state) != 1) return -1;
    p += 2;
    for (int field = 0; field < 19; field++) {  /* the start time is the 20th field after ')' */
        p = strchr(p, ' ');
        if (!p) return -1;
        p++;
    }
    return sscanf(p, "%llu", start) == 1 ? 1 : -1;
}

uint64_t fifo_claim_word(void) {
    long pid = (long)getpid();
    char state;
    unsigned long long start = 0;
    if (proc_stat(pid, &state, &start) != 1) start = 0;  /* then a peer can never prove us dead */
    fifo_me = CLAIM | ((uint64_t)pid << CLAIM_PID_SHIFT) | (start & CLAIM_START_MASK);
    return fifo_me;
}

static void fifo_after_fork_child(void) { fifo_me = 0; }  /* a new process: a new claim word */

/* Whether the process named by claim word `claim` is proven dead: gone, a zombie, or its pid now
   another process's (another start time). A claim that names no process (pid 0) is forged. */
static int claimer_dead(uint64_t claim) {
    long pid = (long)((claim & ~CLAIM) >> CLAIM_PID_SHIFT);
    if (pid == 0) return 1;
    char state;
    unsigned long long start;
    int r = proc_stat(pid, &state, &start);
    if (r < 0) return 0;
    return r == 0 || state == 'Z' || state == 'X' || (start & CLAIM_START_MASK) != (claim & CLAIM_START_MASK);
}

/* ---------------------------------------------------------------- the rare paths */

int fifo_push_corrupt(const FifoMap *m) {
    atomic_fetch_add_explicit(&fifo_corrupt, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(A64(m->base + FIFO_DROPS), 1, memory_order_relaxed);
    /* wake a receiver asleep on its futex: its wait sees the FIFO unsettled and has it repaired */
    fifo_wake(A32(m->base + FIFO_SLEEP));
    return PUSH_FULL;
}

/* The ring is empty at pos (tail = head = pos) but a peer wrote its cells (or its positions): make
   every cell that holds a word the protocol never writes there free for its position in
   [pos, pos + capacity), each by a CAS from the word read. A legal word (free, published or
   claimed for that position: a producer got there first) is left alone. */
static void fifo_rebase(const FifoMap *m, uint64_t pos) {
    for (uint64_t p = pos; p <= pos + m->mask; p++) {
        au64 *cell = fifo_cell(m, p);
        uint64_t seq = atomic_load_explicit(cell, memory_order_acquire);
        if (seq != p && seq != p + 1 && !(seq & CLAIM))
            atomic_compare_exchange_strong_explicit(cell, &seq, p, memory_order_seq_cst, memory_order_relaxed);
    }
}

/* The head cell (position pos) holds `seq`, which the protocol never writes there, or holds pos
   while the tail says pos was claimed: a peer wrote the FIFO. If pos was claimed (the tail is
   past it, by at most a lap) its entry is lost: hand the cell to the next lap and move the head
   on; otherwise (the ring is empty) rebase every cell on pos. Every change is a CAS from the value read, so a
   producer that raced with it keeps its claim. Counted; 0 (nothing taken). */
int fifo_repair(const FifoMap *m, uint64_t pos, uint64_t seq) {
    atomic_fetch_add_explicit(&fifo_corrupt, 1, memory_order_relaxed);
    au64 *cell = fifo_cell(m, pos);
    uint64_t t = atomic_load_explicit(A64(m->base + FIFO_TAIL), memory_order_acquire);
    if (t - pos - 1 <= m->mask) {
        if (atomic_compare_exchange_strong_explicit(cell, &seq, pos + m->mask + 1, memory_order_seq_cst,
                                                    memory_order_relaxed)) {
            uint64_t expect = pos;
            atomic_compare_exchange_strong_explicit(A64(m->base + FIFO_HEAD), &expect, pos + 1,
                                                    memory_order_seq_cst, memory_order_relaxed);
        }
    } else {
        fifo_rebase(m, pos);
    }
    return 0;
}

/* Positions a peer wrote that the ring cannot go on from (the claim bit set): free every cell for
   positions 0 .. capacity - 1 and move both positions to 0, losing what was in the ring. A
   producer that raced with it loses its claim (its publish CAS fails: counted as a drop); one
   that read an old tail claims a cell out of turn, which the ring's helping rule absorbs. */
static void fifo_reset(const FifoMap *m) {
    atomic_fetch_add_explicit(&fifo_corrupt, 1, memory_order_relaxed);
    for (uint64_t i = 0; i <= m->mask; i++) atomic_store_explicit(fifo_cell(m, i), i, memory_order_seq_cst);
    atomic_store_explicit(A64(m->base + FIFO_TAIL), 0, memory_order_seq_cst);
    atomic_store_explicit(A64(m->base + FIFO_HEAD), 0, memory_order_seq_cst);
}

int fifo_far_bit(PyObject **far, Py_ssize_t bit) {
    PyObject *one = PyLong_FromLong(1), *shift = PyLong_FromSsize_t(bit), *b = NULL, *r = NULL;
    if (one && shift) b = PyNumber_Lshift(one, shift);
    if (b) r = *far ? PyNumber_Or(*far, b) : Py_NewRef(b);
    Py_XDECREF(one); Py_XDECREF(shift); Py_XDECREF(b);
    Py_XSETREF(*far, r);
    return r ? 0 : -1;
}

/* ---------------------------------------------------------------- for Python */

/* fifo_push(fifo, segment_id, offset) -> PUSH_* */
static PyObject *n_fifo_push(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *fo; unsigned long long seg, off; FifoMap *m;
    if (!PyArg_ParseTuple(args, "OKK", &fo, &seg, &off) || !(m = as_fifo(fo))) return NULL;
    return PyLong_FromLong(fifo_push(m, seg, off));
}

/* fanout(fifos, seg, off) -> 0 in the common case; else bits 0-14: drops, bit 15: at least one
   futex wake was issued, bit 16+i: target i sleeps in an event loop and needs its doorbell rung
   (see fifo_fanout). */
static PyObject *n_fanout(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "fanout(tuple_of_fifos, segment_id, offset)");
        return NULL;
    }
    unsigned long long seg = PyLong_AsUnsignedLongLong(args[1]), off = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    unsigned long long result;
    PyObject *far;
    if (fifo_fanout(args[0], seg, off, 0, &result, &far) < 0) return NULL;
    PyObject *r = PyLong_FromUnsignedLongLong(result);
    if (far && r) Py_SETREF(r, PyNumber_Or(r, far));
    Py_XDECREF(far);
    return r;
}

/* pop the head entry: (segment id, offset) (+ waited_ns if waited != UINT64_MAX), or None. */
static PyObject *pop_tuple(const FifoMap *m, uint64_t waited) {
    uint64_t seg = 0, off = 0;
    if (!fifo_take(m, &seg, &off)) Py_RETURN_NONE;
    if (waited == UINT64_MAX) return Py_BuildValue("(KK)", (unsigned long long)seg, (unsigned long long)off);
    return Py_BuildValue("(KKK)", (unsigned long long)seg, (unsigned long long)off, (unsigned long long)waited);
}

/* fifo_pop(fifo) -> (segment id, offset) or None when empty (or head cell not yet published). */
static PyObject *n_fifo_pop(PyObject *Py_UNUSED(self), PyObject *arg) {
    FifoMap *m = as_fifo(arg);
    return m ? pop_tuple(m, UINT64_MAX) : NULL;
}

/* fifo_ready(fifo) -> whether the head entry is published (a seq_cst load: the re-check after
   announcing sleep, as the futex wait does). */
static PyObject *n_fifo_ready(PyObject *Py_UNUSED(self), PyObject *arg) {
    FifoMap *m = as_fifo(arg);
    return m ? PyBool_FromLong(fifo_ready(m)) : NULL;
}

/* skip_stalled: the head position was claimed and never published. Retire its cell if its
   producer is proven dead (killed mid-push): True. A live producer keeps its cell however long it
   takes (False). Words the protocol never writes (a peer wrote the FIFO) are repaired and counted
   in fifo_corrupt (False). */
static PyObject *n_fifo_skip_stalled(PyObject *Py_UNUSED(self), PyObject *arg) {
    FifoMap *m = as_fifo(arg);
    if (!m) return NULL;
    au64 *head = A64(m->base + FIFO_HEAD), *tail = A64(m->base + FIFO_TAIL);
    uint64_t pos = atomic_load_explicit(head, memory_order_acquire);
    uint64_t t = atomic_load_explicit(tail, memory_order_acquire);
    if ((pos | t) & CLAIM) {  /* positions no push reaches: start the ring afresh */
        fifo_reset(m);
        Py_RETURN_FALSE;
    }
    if (t + 1 == pos) {  /* the head one past the tail: help the push that has yet to move it */
        atomic_compare_exchange_strong_explicit(tail, &t, pos, memory_order_seq_cst, memory_order_relaxed);
        t = atomic_load_explicit(tail, memory_order_acquire);
    }
    if (t - pos > m->mask + 1) {  /* a tail no push writes (behind the head, or over a lap ahead) */
        atomic_fetch_add_explicit(&fifo_corrupt, 1, memory_order_relaxed);
        if (atomic_compare_exchange_strong_explicit(tail, &t, pos, memory_order_seq_cst, memory_order_relaxed))
            fifo_rebase(m, pos);
        Py_RETURN_FALSE;
    }
    au64 *cell = fifo_cell(m, pos);
    uint64_t seq = atomic_load_explicit(cell, memory_order_acquire);
    if (seq == pos + 1 || (seq == pos && t == pos)) Py_RETURN_FALSE;  /* ready, or empty */
    if (!(seq & CLAIM)) {
        fifo_repair(m, pos, seq);
        Py_RETURN_FALSE;
    }
    if (!claimer_dead(seq)) Py_RETURN_FALSE;
    /* the claim was for pos: move the tail past it, as a helper would (the producer may have died
       before it did), then hand the cell to the next lap with a CAS from the dead producer's claim
       word, then move the head on */
    uint64_t at = pos;
    atomic_compare_exchange_strong_explicit(tail, &at, pos + 1, memory_order_seq_cst, memory_order_relaxed);
    if (!atomic_compare_exchange_strong_explicit(cell, &seq, pos + m->mask + 1, memory_order_seq_cst,
                                                 memory_order_relaxed))
        Py_RETURN_FALSE;
    atomic_compare_exchange_strong_explicit(head, &pos, pos + 1, memory_order_seq_cst, memory_order_relaxed);
    Py_RETURN_TRUE;
}

static int parse_wait_args(PyObject *const *args, Py_ssize_t nargs, FifoMap **m, uint64_t *spin_ns,
                           double *timeout_s, int *sleep_ok) {
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "expected (fifo, spin_ns, timeout_s[, sleep_ok])");
        return -1;
    }
    if (!(*m = as_fifo(args[0]))) return -1;
    return parse_wait_policy(args + 1, nargs - 1, spin_ns, timeout_s, sleep_ok);
}

/* fifo_wait(fifo, spin_ns, timeout_s, sleep_ok=True) -> WAIT_*; a POSIX signal whose handler
   returns ends the wait (WAIT_TIMEOUT). */
static PyObject *n_fifo_wait(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    FifoMap *m; uint64_t spin_ns, waited; double timeout_s; int sleep_ok, r;
    if (parse_wait_args(args, nargs, &m, &spin_ns, &timeout_s, &sleep_ok) < 0) return NULL;
    if (fifo_ready(m)) return PyLong_FromLong(WAIT_READY);
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        r = spin_then_sleep(m, spin_ns, timeout_s, sleep_ok, &waited);
        Py_END_ALLOW_THREADS
        if (r != WAIT_SLICE) break;
        if (PyErr_CheckSignals() < 0) return NULL;  /* a slice ended: a handler may raise */
        timeout_s -= (double)waited * 1e-9;
        spin_ns = 0;
        r = WAIT_TIMEOUT;
        if (timeout_s <= 0) break;
    }
    if (r == WAIT_INTERRUPTED && PyErr_CheckSignals() < 0) return NULL;
    if (r == WAIT_TIMEOUT || r == WAIT_INTERRUPTED)  /* a signal that came meanwhile is no timeout */
        r = fifo_ready(m) ? WAIT_READY : WAIT_TIMEOUT;
    return PyLong_FromLong(r);
}

/* fifo_wait_pop(fifo, spin_ns, timeout_s, sleep_ok=True) -> (segment id, offset, waited_ns) or WAIT_* */
static PyObject *n_fifo_wait_pop(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    FifoMap *m; uint64_t spin_ns, waited; double timeout_s; int sleep_ok;
    if (parse_wait_args(args, nargs, &m, &spin_ns, &timeout_s, &sleep_ok) < 0) return NULL;
    int r = wait_signal(m, spin_ns, timeout_s, sleep_ok, &waited);
    if (r < 0) return NULL;
    if (r != WAIT_READY) return PyLong_FromLong(r);
    PyObject *t = pop_tuple(m, waited);
    if (t == Py_None) { Py_DECREF(t); return PyLong_FromLong(WAIT_TIMEOUT); }
    return t;
}

/* Handler calls made by fifo_wait_dispatch, and signals it took that no handler covered (nudges
   aside): ombm.stats()'s signals_delivered and signals_unhandled, beside core/signals.py's own. */
static unsigned long long dispatch_delivered = 0, dispatch_unhandled = 0;  /* under the GIL */
static PyObject *enabled_name = NULL;  /* "enabled", interned once */
#define NUDGE_SEGMENT 0  /* _layout.NUDGE_SEGMENT: a nudge ends a wait, runs no handler */

/* Run the handlers of signal (seg, off) from `table` (a dict: segment id -> tuple of entries
   (lo, hi, base, fn, handle), as core/signals.py's Receiver keeps them): every entry whose
   [lo, hi) holds off and whose handle is still enabled, in order, fn(base + off). How many ran,
   or -1 with the exception of a handler (the signal is consumed; the later ones stay queued). An
   entry of another shape is skipped: the table is ours, but a handler may replace it under us. */
static Py_ssize_t dispatch_signal(PyObject *table, uint64_t seg, uint64_t off) {
    if (!enabled_name && !(enabled_name = PyUnicode_InternFromString("enabled"))) return -1;
    PyObject *key = PyLong_FromUnsignedLongLong(seg);
    if (!key) return -1;
    PyObject *entries = PyDict_GetItemWithError(table, key);
    Py_DECREF(key);
    if (!entries) return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_CheckExact(entries)) return 0;
    Py_INCREF(entries);  /* a handler may add or remove handlers: this snapshot stays ours */
    Py_ssize_t ran = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(entries); i++) {
        PyObject *e = PyTuple_GET_ITEM(entries, i);
        if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 5) continue;
        unsigned long long lo = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 0));
        unsigned long long hi = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 1));
        unsigned long long base = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(e, 2));
        if (PyErr_Occurred()) { ran = -1; break; }
        if (off < lo || off >= hi) continue;
        PyObject *enabled = PyObject_GetAttr(PyTuple_GET_ITEM(e, 4), enabled_name);
        int on = enabled ? PyObject_IsTrue(enabled) : -1;
        Py_XDECREF(enabled);
        if (on < 0) { ran = -1; break; }
        if (!on) continue;
        ran++;
        dispatch_delivered++;
        PyObject *address = PyLong_FromUnsignedLongLong(base + off);
        PyObject *r = address ? PyObject_CallOneArg(PyTuple_GET_ITEM(e, 3), address) : NULL;
        Py_XDECREF(address);
        if (!r) { ran = -1; break; }
        Py_DECREF(r);
    }
    Py_DECREF(entries);
    return ran;
}

/* sig_wait's per-signal path (core/signals.py): wait, take, and run the handlers of the signal
   taken (dispatch_signal) in one call, without a return to Python between the wake-up and the
   handler: (handlers run, segment id, waited_ns) or WAIT_*. With `quiet`, a wait that ran a handler
   (or took a nudge) within learn_ns (as Receiver.wait_policy's: a wait that took no longer teaches
   the spin policy nothing) returns only the time left: timeout_s less the time waited (>= 0), plus
   `beyond` (a caller's timeout past the wait's), a float. */
static PyObject *wait_dispatch(const FifoMap *m, PyObject *table, uint64_t spin_ns, double timeout_s, int sleep_ok,
                               int quiet, uint64_t learn_ns, double beyond) {
    uint64_t waited, seg = 0, off = 0;
    int r = wait_signal(m, spin_ns, timeout_s, sleep_ok, &waited);
    if (r < 0) return NULL;
    if (r != WAIT_READY) return PyLong_FromLong(r);
    if (!fifo_take(m, &seg, &off)) return PyLong_FromLong(WAIT_TIMEOUT);
    Py_ssize_t ran = dispatch_signal(table, seg, off);
    if (ran < 0) return NULL;
    if (!ran && seg != NUDGE_SEGMENT) dispatch_unhandled++;
    else if (quiet && waited <= learn_ns) {
        double left = timeout_s - (double)waited * 1e-9;
        return PyFloat_FromDouble((left > 0 ? left : 0.0) + beyond);
    }
    return Py_BuildValue("(nKK)", ran, (unsigned long long)seg, (unsigned long long)waited);
}

/* fifo_wait_dispatch(fifo, table, spin_ns, timeout_s, sleep_ok=True, learn_ns=None) -> (handlers run,
   segment id, waited_ns) or WAIT_*, or with learn_ns the time left when there is nothing to learn
   (wait_dispatch). */
static PyObject *n_fifo_wait_dispatch(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    FifoMap *m; uint64_t spin_ns; double timeout_s; int sleep_ok;
    if (nargs < 4 || nargs > 6 || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "expected (fifo, table: dict, spin_ns, timeout_s[, sleep_ok[, learn_ns]])");
        return NULL;
    }
    if (!(m = as_fifo(args[0])) || parse_wait_policy(args + 2, nargs == 6 ? 3 : nargs - 2, &spin_ns, &timeout_s,
                                                     &sleep_ok) < 0)
        return NULL;
    uint64_t learn_ns = 0;
    int quiet = nargs == 6 && args[5] != Py_None;
    if (quiet && (learn_ns = PyLong_AsUnsignedLongLong(args[5])) == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    return wait_dispatch(m, args[1], spin_ns, timeout_s, sleep_ok, quiet, learn_ns, 0.0);
}

/* ---------------------------------------------------------------- SigWait: Receiver.wait's common case

   A receiver's `wait`, native: SigWait(fifo_map, table, fifo, wait, wait_on). A memory receiver
   (core/signals.py) shadows its method `wait` with this object's `wait`, which takes the common
   case itself: one float timeout >= 0, the FIFO open, the settings the policy was set from
   current, and a wait that ran a handler with nothing for the spin policy to learn (issue 13: on
   one CPU each side's Python around the wait cost about as much as the hand-over). Everything else
   goes to the Python methods it was given, unbound (`wait(receiver, *args)`, the method itself, and
   `wait_on(receiver, timeout, left, r)`, after a first native wait that returned r); the receiver
   is held weakly (no cycle: a receiver dropped unclosed still warns at once). */
typedef struct {
    PyObject_HEAD
    FifoMap *fifo;         /* the receiver's memory FIFO */
    PyObject *table;       /* its handler table (a dict, changed in place by the receiver) */
    PyObject *owner;       /* its core.fifo.Fifo: closed when `_closed` is not False */
    PyObject *receiver;    /* a weak reference to the receiver */
    PyObject *wait, *wait_on;  /* the Python paths (functions, unbound) */
    PyObject *settings;    /* the settings object the policy below came from (None: not yet set) */
    uint64_t spin_ns, learn_ns;
    int sleep_ok, quiet;   /* quiet: learn_ns is set (not None) */
} SigWait;

static PyObject *config_settings = NULL;  /* ombm.core.config's module dict, looked up once */
static PyObject *closed_name = NULL, *settings_name = NULL;

static int SigWait_init(SigWait *w, PyObject *args, PyObject *Py_UNUSED(kw)) {
    PyObject *fifo, *table, *owner, *receiver, *wait, *wait_on;
    if (!PyArg_ParseTuple(args, "O!O!OOOO", &FifoMapType, &fifo, &PyDict_Type, &table, &owner, &receiver, &wait,
                          &wait_on))
        return -1;
    if (!closed_name && !(closed_name = PyUnicode_InternFromString("_closed"))) return -1;
    if (!settings_name && !(settings_name = PyUnicode_InternFromString("SETTINGS"))) return -1;
    if (!config_settings) {
        PyObject *config = PyImport_ImportModule("ombm.core.config");
        if (!config) return -1;
        config_settings = Py_NewRef(PyModule_GetDict(config));
        Py_DECREF(config);
    }
    PyObject *ref = PyWeakref_NewRef(receiver, NULL);
    if (!ref) return -1;
    Py_XSETREF(w->receiver, ref);
    Py_XSETREF(w->fifo, (FifoMap *)Py_NewRef(fifo));
    Py_XSETREF(w->table, Py_NewRef(table));
    Py_XSETREF(w->owner, Py_NewRef(owner));
    Py_XSETREF(w->wait, Py_NewRef(wait));
    Py_XSETREF(w->wait_on, Py_NewRef(wait_on));
    Py_XSETREF(w->settings, Py_NewRef(Py_None));
    return 0;
}

/* The table's handlers may refer to their receiver's owner (an RPC client, say), which refers to
   the receiver and so to this object: the collector must see these references to free the cycle. */
static int SigWait_traverse(SigWait *w, visitproc visit, void *arg) {
    Py_VISIT(w->fifo); Py_VISIT(w->table); Py_VISIT(w->owner); Py_VISIT(w->receiver);
    Py_VISIT(w->wait); Py_VISIT(w->wait_on); Py_VISIT(w->settings);
    return 0;
}

static int SigWait_clear(SigWait *w) {
    Py_CLEAR(w->fifo); Py_CLEAR(w->table); Py_CLEAR(w->owner); Py_CLEAR(w->receiver);
    Py_CLEAR(w->wait); Py_CLEAR(w->wait_on); Py_CLEAR(w->settings);
    return 0;
}

static void SigWait_dealloc(SigWait *w) {
    PyObject_GC_UnTrack(w);
    SigWait_clear(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

/* policy(settings, spin_ns, sleep_ok, learn_ns): the receiver's spin policy, set from `settings`
   (learn_ns None: every wait goes back to Python to be learnt from). */
static PyObject *SigWait_policy(SigWait *w, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "policy(settings, spin_ns, sleep_ok, learn_ns)");
        return NULL;
    }
    uint64_t spin_ns = PyLong_AsUnsignedLongLong(args[1]);
    if (spin_ns == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    int sleep_ok = PyObject_IsTrue(args[2]);
    if (sleep_ok < 0) return NULL;
    int quiet = args[3] != Py_None;
    uint64_t learn_ns = quiet ? PyLong_AsUnsignedLongLong(args[3]) : 0;
    if (learn_ns == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    Py_XSETREF(w->settings, Py_NewRef(args[0]));
    w->spin_ns = spin_ns, w->sleep_ok = sleep_ok, w->learn_ns = learn_ns, w->quiet = quiet;
    Py_RETURN_NONE;
}

/* Call `fn(receiver, *args)`: a Python path of the receiver (ReferenceError if it is gone). */
static PyObject *SigWait_defer(SigWait *w, PyObject *fn, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 7) {
        PyErr_SetString(PyExc_TypeError, "wait() takes one argument, the timeout");
        return NULL;
    }
    PyObject *receiver = NULL;  /* a strong reference, or NULL: gone */
#if PY_VERSION_HEX >= 0x030D0000
    if (w->receiver && PyWeakref_GetRef(w->receiver, &receiver) < 0) return NULL;
#else
    if (w->receiver) {
        receiver = PyWeakref_GetObject(w->receiver);  /* borrowed */
        if (receiver == Py_None) receiver = NULL;
        else Py_INCREF(receiver);
    }
#endif
    if (!receiver || !fn) {
        Py_XDECREF(receiver);
        PyErr_SetString(PyExc_ReferenceError, "the receiver of this wait is gone");
        return NULL;
    }
    PyObject *stack[8];
    stack[0] = receiver;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) stack[i + 1] = args[i];
    PyObject *r = PyObject_Vectorcall(fn, stack, (size_t)(nargs + 1), kwnames);
    Py_DECREF(receiver);
    return r;
}

/* wait(timeout=None) -> the time left: Receiver.wait (see above). */
static PyObject *SigWait_wait(SigWait *w, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || kwnames || !PyFloat_CheckExact(args[0]) || !w->owner)  /* (no owner: not set, or cleared) */
        return SigWait_defer(w, w->wait, args, nargs, kwnames);
    double timeout = PyFloat_AS_DOUBLE(args[0]);
    PyObject *closed = PyObject_GetAttr(w->owner, closed_name);
    if (!closed) return NULL;
    Py_DECREF(closed);  /* only its identity is compared */
    if (!(timeout >= 0) || closed != Py_False || PyDict_GetItemWithError(config_settings, settings_name) != w->settings)
        return PyErr_Occurred() ? NULL : SigWait_defer(w, w->wait, args, nargs, NULL);
    double left = timeout < 3600.0 ? timeout : 3600.0;
    FifoMap *fifo = (FifoMap *)Py_NewRef(w->fifo);  /* ours through the wait, whatever happens to w */
    PyObject *table = Py_NewRef(w->table);
    PyObject *r = wait_dispatch(fifo, table, w->spin_ns, left, w->sleep_ok, w->quiet, w->learn_ns, timeout - left);
    Py_DECREF(fifo);
    Py_DECREF(table);
    if (!r || PyFloat_CheckExact(r)) return r;
    PyObject *left_obj = PyFloat_FromDouble(left);
    PyObject *more = NULL;
    if (left_obj) more = SigWait_defer(w, w->wait_on, (PyObject *[]){args[0], left_obj, r}, 3, NULL);
    Py_XDECREF(left_obj);
    Py_DECREF(r);
    return more;
}

static PyMethodDef SigWait_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))SigWait_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait(timeout=None) -> the time left: the receiver's sig_wait"},
    {"policy", (PyCFunction)(void (*)(void))SigWait_policy, METH_FASTCALL,
     "policy(settings, spin_ns, sleep_ok, learn_ns): the spin policy, set from settings"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SigWaitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.SigWait",
    .tp_basicsize = sizeof(SigWait),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "SigWait(fifo_map, table, fifo, receiver, wait, wait_on): a receiver's native wait",
    .tp_traverse = (traverseproc)SigWait_traverse,
    .tp_clear = (inquiry)SigWait_clear,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SigWait_init,
    .tp_dealloc = (destructor)SigWait_dealloc,
    .tp_methods = SigWait_methods,
};

/* dispatch_counters() -> (delivered, unhandled): fifo_wait_dispatch's share of ombm.stats(). */
static PyObject *n_dispatch_counters(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(KK)", dispatch_delivered, dispatch_unhandled);
}

static PyObject *n_dispatch_counters_reset(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    dispatch_delivered = dispatch_unhandled = 0;
    Py_RETURN_NONE;
}

static PyObject *n_fifo_corrupt(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromUnsignedLongLong(atomic_load_explicit(&fifo_corrupt, memory_order_relaxed));
}

static PyObject *n_fifo_corrupt_reset(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    atomic_store_explicit(&fifo_corrupt, 0, memory_order_relaxed);
    Py_RETURN_NONE;
}

static PyMethodDef fifo_functions[] = {
    {"fifo_push", n_fifo_push, METH_VARARGS, "push (segment id, offset); PUSH_* result"},
    {"fanout", (PyCFunction)(void (*)(void))n_fanout, METH_FASTCALL,
     "push one signal to several FIFOs; 0 when all went well"},
    {"fifo_pop", n_fifo_pop, METH_O, "pop (segment id, offset) or None"},
    {"fifo_ready", n_fifo_ready, METH_O, "whether the head entry is published (seq_cst)"},
    {"fifo_skip_stalled", n_fifo_skip_stalled, METH_O, "retire a head cell whose producer is proven dead"},
    {"fifo_wait", (PyCFunction)(void (*)(void))n_fifo_wait, METH_FASTCALL,
     "spin-then-sleep until the FIFO has an entry; WAIT_*"},
    {"fifo_wait_pop", (PyCFunction)(void (*)(void))n_fifo_wait_pop, METH_FASTCALL,
     "wait, then pop: (segment id, offset, waited_ns) or WAIT_*"},
    {"fifo_wait_dispatch", (PyCFunction)(void (*)(void))n_fifo_wait_dispatch, METH_FASTCALL,
     "wait, pop and run the signal's handlers: (handlers run, segment id, waited_ns) or WAIT_*"},
    {"dispatch_counters", n_dispatch_counters, METH_NOARGS, "(handler calls, unhandled signals) of fifo_wait_dispatch"},
    {"dispatch_counters_reset", n_dispatch_counters_reset, METH_NOARGS, "zero fifo_wait_dispatch's counters (after fork)"},
    {"fifo_corrupt", n_fifo_corrupt, METH_NOARGS, "FIFO words found corrupt by this process (drops, repairs)"},
    {"fifo_corrupt_reset", n_fifo_corrupt_reset, METH_NOARGS, "zero the corrupt-word counter (after fork)"},
    {NULL, NULL, 0, NULL},
};

int native_add_fifo(PyObject *module) {
    if (pthread_atfork(NULL, NULL, fifo_after_fork_child) != 0) {
        PyErr_SetString(PyExc_OSError, "ombm._native: pthread_atfork failed");
        return -1;
    }
    return native_add(module, fifo_functions, (PyTypeObject *const[]){&FifoMapType, &SigWaitType, NULL});
}
