/*
 * The bridge's native helpers (paper §3.2.3; docs/net.md "How an update travels"): what a pass of
 * the bridge (src/ombm/net/bridge.py, replica.py) does per byte of a unit and per wait, where Python
 * costs most. Python keeps the control plane and every decision; these only compare, copy and wait.
 *
 *   unit_delta(src, shadow, lo, hi)   the delta of a unit against the bridge's shadow, in one pass:
 *                                     where src[lo:hi] (a binding of a replicated segment, written by
 *                                     local processes as we read) first differs from shadow[lo:hi],
 *                                     and src from there copied into the shadow: that one copy is
 *                                     what is sent, the comparison only says where it starts. An RPC slot is 128 KiB with its frame at the end: the
 *                                     Python version copied the unit three times per update.
 *   bridge_spin(fifo, fd, spin_ns)    the bridge's spin before it sleeps: until its signal FIFO has
 *                                     an entry or the socket fd a datagram, for at most spin_ns
 *                                     (GIL released, sched_yield between polls so a process on this
 *                                     CPU runs: on two CPUs the bridge shares one with a client or a
 *                                     server). The sleep itself stays Python's (the selector).
 */
#include "fifo.h"  /* first: Python.h sets the feature macros */
#include "net.h"

#include <poll.h>
#include <sched.h>

/* ---------------------------------------------------------------- the delta */

#define DELTA_UNLOCKED (256 << 10)  /* a range longer than this is compared and copied without the GIL */

static PyObject *n_unit_delta(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "unit_delta(src, shadow, lo, hi)");
        return NULL;
    }
    Py_ssize_t lo = PyLong_AsSsize_t(args[2]), hi = PyLong_AsSsize_t(args[3]);
    if ((lo == -1 || hi == -1) && PyErr_Occurred()) return NULL;
    Py_buffer src, shadow;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &shadow, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    PyObject *result = NULL;
    if (lo < 0 || hi < lo || hi > src.len || hi > shadow.len) {
        PyErr_SetString(PyExc_ValueError, "unit_delta: lo and hi must bound a range of both buffers");
        goto out;
    }
    const unsigned char *s = (const unsigned char *)src.buf + lo;
    unsigned char *d = (unsigned char *)shadow.buf + lo;
    Py_ssize_t n = hi - lo;
    /* a large unit without the GIL (both buffers stay exported, so neither moves); an RPC slot
       (128 KiB, about 10 us here) keeps it: releasing costs more than it gives */
    PyThreadState *unlocked = n > DELTA_UNLOCKED ? PyEval_SaveThread() : NULL;
    Py_ssize_t at = delta_copy(s, d, n);
    if (unlocked) PyEval_RestoreThread(unlocked);
    result = PyLong_FromSsize_t(at);
out:
    PyBuffer_Release(&shadow);
    PyBuffer_Release(&src);
    return result;
}

/* ---------------------------------------------------------------- the spin */

/* How long the spin only polls before it yields between polls (as QUIET_SPIN_NS in sync.c: a peer
   on the other CPU often answers within it, and a sched_yield is a system call). */
#define BRIDGE_QUIET_NS 2000ull

static int socket_readable(long fd) {
    struct pollfd p = {.fd = (int)fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

static PyObject *n_bridge_spin(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "bridge_spin(fifo, fd, spin_ns)");
        return NULL;
    }
    FifoMap *m = as_fifo(args[0]);
    if (!m) return NULL;
    long fd = PyLong_AsLong(args[1]);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    unsigned long long spin_ns = PyLong_AsUnsignedLongLong(args[2]);
    if (spin_ns == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "bridge_spin: fd must be a descriptor");
        return NULL;
    }
    long long waited = -1;
    Py_BEGIN_ALLOW_THREADS
    uint64_t start = now_ns(), end = start + spin_ns, quiet = start + BRIDGE_QUIET_NS, t = start;
    unsigned polls = 0;
    for (;;) {
        /* the FIFO is a load; the socket a system call: looked at every 8th turn while quiet */
        if (fifo_ready(m) || ((polls++ & 7) == 0 && socket_readable(fd))) { waited = (long long)(now_ns() - start); break; }
        t = now_ns();
        if (t >= end) break;
        if (t >= quiet) {
            sched_yield();
            if (socket_readable(fd)) { waited = (long long)(now_ns() - start); break; }
        }
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(waited);
}

static PyMethodDef bridge_functions[] = {
    {"unit_delta", (PyCFunction)(void (*)(void))n_unit_delta, METH_FASTCALL,
     "unit_delta(src, shadow, lo, hi): where src[lo:hi] first differs from shadow[lo:hi] (relative to lo), "
     "src from there copied into shadow"},
    {"bridge_spin", (PyCFunction)(void (*)(void))n_bridge_spin, METH_FASTCALL,
     "bridge_spin(fifo, fd, spin_ns): spin (yielding) until the FIFO has an entry or fd is readable: "
     "the ns it took, or -1 if spin_ns passed"},
    {NULL, NULL, 0, NULL},
};

int native_add_bridge(PyObject *module) { return native_add(module, bridge_functions, NULL); }
