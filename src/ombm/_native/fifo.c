/*
 * The signal FIFO for Python (paper §3.1.2: the per-processor signal FIFO, loss when full):
 * push, fan-out, pop, retire a stalled cell, wait, wait-and-pop. The ring itself (push, take,
 * fan-out) is in fifo.h, inline for the writer and the lanes; the wait is in sync.c.
 */
#include "fifo.h"

/* fifo_push(fifo, segment_id, offset) -> PUSH_* */
static PyObject *n_fifo_push(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *ao; unsigned long long seg, off; uintptr_t f;
    if (!PyArg_ParseTuple(args, "OKK", &ao, &seg, &off) || parse_addr(ao, &f) < 0) return NULL;
    return PyLong_FromLong(fifo_push(f, seg, off));
}

/* fanout(fifos, seg, off) -> 0 in the common case; else bits 0-15: drops,
   bit 16+i: target i sleeps in an event loop and needs its doorbell rung,
   bit 15: at least one futex wake was issued (see fifo_fanout). */
static PyObject *n_fanout(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "fanout(tuple_of_fifos, segment_id, offset)");
        return NULL;
    }
    unsigned long long seg = PyLong_AsUnsignedLongLong(args[1]), off = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    unsigned long long result;
    if (fifo_fanout(args[0], seg, off, &result) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(result);
}

/* pop the head entry: (segment id, offset) (+ waited_ns if waited != UINT64_MAX), or None. */
static PyObject *pop_tuple(uintptr_t f, uint64_t waited) {
    uint64_t seg, off;
    if (!fifo_take(f, &seg, &off)) Py_RETURN_NONE;
    if (waited == UINT64_MAX) return Py_BuildValue("(KK)", (unsigned long long)seg, (unsigned long long)off);
    return Py_BuildValue("(KKK)", (unsigned long long)seg, (unsigned long long)off, (unsigned long long)waited);
}

/* fifo_pop(fifo) -> (segment id, offset) or None when empty (or head cell not yet published). */
static PyObject *n_fifo_pop(PyObject *Py_UNUSED(self), PyObject *arg) {
    uintptr_t f;
    if (parse_addr(arg, &f) < 0) return NULL;
    return pop_tuple(f, UINT64_MAX);
}

/* skip_stalled: the head cell was claimed by a producer that never published
   (killed mid-push). Retire it so later signals flow; True if skipped. */
static PyObject *n_fifo_skip_stalled(PyObject *Py_UNUSED(self), PyObject *arg) {
    uintptr_t f;
    if (parse_addr(arg, &f) < 0) return NULL;
    au64 *head = A64(f + FIFO_HEAD);
    uint64_t pos = atomic_load_explicit(head, memory_order_acquire);
    if (atomic_load_explicit(A64(f + FIFO_TAIL), memory_order_acquire) == pos) Py_RETURN_FALSE;
    uint64_t expect = pos, mask = fifo_mask(f);
    /* hand the cell to the next lap: the stalled producer's publish, a CAS of the same word
       (read-modify-writes of one word are totally ordered), then fails and is lost */
    if (!atomic_compare_exchange_strong_explicit(fifo_cell(f, mask, pos), &expect, pos + mask + 1,
                                                 memory_order_seq_cst, memory_order_seq_cst))
        Py_RETURN_FALSE;
    atomic_store_explicit(head, pos + 1, memory_order_release);
    Py_RETURN_TRUE;
}

static int parse_wait_args(PyObject *const *args, Py_ssize_t nargs, uintptr_t *f, uint64_t *spin_ns,
                           double *timeout_s, int *sleep_ok) {
    if (nargs < 3 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "expected (fifo, spin_ns, timeout_s[, sleep_ok])");
        return -1;
    }
    if (parse_addr(args[0], f) < 0) return -1;
    return parse_wait_policy(args + 1, nargs - 1, spin_ns, timeout_s, sleep_ok);
}

/* fifo_wait(fifo, spin_ns, timeout_s, sleep_ok=True) -> WAIT_*; a POSIX signal whose handler
   returns ends the wait (WAIT_TIMEOUT). */
static PyObject *n_fifo_wait(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    uintptr_t f; uint64_t spin_ns, waited; double timeout_s; int sleep_ok, r;
    if (parse_wait_args(args, nargs, &f, &spin_ns, &timeout_s, &sleep_ok) < 0) return NULL;
    if (fifo_ready(f)) return PyLong_FromLong(WAIT_READY);
    Py_BEGIN_ALLOW_THREADS
    r = spin_then_sleep(f, spin_ns, timeout_s, sleep_ok, &waited);
    Py_END_ALLOW_THREADS
    if (r == WAIT_INTERRUPTED && PyErr_CheckSignals() < 0) return NULL;
    return PyLong_FromLong(r == WAIT_INTERRUPTED ? WAIT_TIMEOUT : r);
}

/* fifo_wait_pop(fifo, spin_ns, timeout_s, sleep_ok=True) -> (segment id, offset, waited_ns) or WAIT_* */
static PyObject *n_fifo_wait_pop(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    uintptr_t f; uint64_t spin_ns, waited; double timeout_s; int sleep_ok;
    if (parse_wait_args(args, nargs, &f, &spin_ns, &timeout_s, &sleep_ok) < 0) return NULL;
    int r = wait_signal(f, spin_ns, timeout_s, sleep_ok, &waited);
    if (r < 0) return NULL;
    if (r != WAIT_READY) return PyLong_FromLong(r);
    PyObject *t = pop_tuple(f, waited);
    if (t == Py_None) { Py_DECREF(t); return PyLong_FromLong(WAIT_TIMEOUT); }
    return t;
}

static PyMethodDef fifo_functions[] = {
    {"fifo_push", n_fifo_push, METH_VARARGS, "push (segment id, offset); PUSH_* result"},
    {"fanout", (PyCFunction)(void (*)(void))n_fanout, METH_FASTCALL,
     "push one signal to several FIFOs; 0 when all went well"},
    {"fifo_pop", n_fifo_pop, METH_O, "pop (segment id, offset) or None"},
    {"fifo_skip_stalled", n_fifo_skip_stalled, METH_O, "retire a head cell whose producer died"},
    {"fifo_wait", (PyCFunction)(void (*)(void))n_fifo_wait, METH_FASTCALL,
     "spin-then-sleep until the FIFO has an entry; WAIT_*"},
    {"fifo_wait_pop", (PyCFunction)(void (*)(void))n_fifo_wait_pop, METH_FASTCALL,
     "wait, then pop: (segment id, offset, waited_ns) or WAIT_*"},
    {NULL, NULL, 0, NULL},
};

int native_add_fifo(PyObject *module) { return native_add(module, fifo_functions, NULL); }
