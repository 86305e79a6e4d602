/*
 * Synchronisation: atomics and futexes on shared memory for Python, and the spin-then-sleep
 * wait on a signal FIFO (paper §3.1.2: the receiver sees a signal while it spins and is woken
 * through the kernel only if it sleeps; DESIGN.md §2 and the wait policy of core/signals.py).
 *
 * Addresses are ints that ombm._layout's users compute (a mapping's base + an offset). Every
 * access Python makes here is seq_cst: the protocols written in Python include Dekker-style
 * handshakes, where each side stores, then loads, and at least one must see the other's store
 * (aio.py announces its doorbell sleep with store32, then reads the FIFO's depth, against
 * fifo_push, which publishes, then reads the sleep word). Release stores and acquire loads do
 * not promise that (a store may pass a later load, on x86 too). A seq_cst load is the acquire
 * load's instruction on x86 and aarch64; a seq_cst store costs an xchg on x86, little beside a
 * Python call.
 */
#include "fifo.h"  /* first: Python.h sets the feature macros */

#include <sched.h>

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ---------------------------------------------------------------- atomics */

static PyObject *n_addr_of(PyObject *Py_UNUSED(self), PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    uintptr_t a = (uintptr_t)view.buf;
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong((unsigned long long)a);
}

static PyObject *n_load64(PyObject *Py_UNUSED(self), PyObject *arg) {
    uintptr_t a;
    if (parse_addr(arg, &a) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(atomic_load_explicit(A64(a), memory_order_seq_cst));
}

static PyObject *n_load32(PyObject *Py_UNUSED(self), PyObject *arg) {
    uintptr_t a;
    if (parse_addr32(arg, &a) < 0) return NULL;
    return PyLong_FromUnsignedLong(atomic_load_explicit(A32(a), memory_order_seq_cst));
}

static PyObject *n_store64(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *ao; unsigned long long v; uintptr_t a;
    if (!PyArg_ParseTuple(args, "OK", &ao, &v) || parse_addr(ao, &a) < 0) return NULL;
    atomic_store_explicit(A64(a), (uint64_t)v, memory_order_seq_cst);
    Py_RETURN_NONE;
}

static PyObject *n_store32(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *ao; unsigned int v; uintptr_t a;
    if (!PyArg_ParseTuple(args, "OI", &ao, &v) || parse_addr32(ao, &a) < 0) return NULL;
    atomic_store_explicit(A32(a), (uint32_t)v, memory_order_seq_cst);
    Py_RETURN_NONE;
}

static PyObject *n_cas64(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *ao; unsigned long long expected, desired; uintptr_t a;
    if (!PyArg_ParseTuple(args, "OKK", &ao, &expected, &desired) || parse_addr(ao, &a) < 0) return NULL;
    uint64_t e = expected;
    return PyBool_FromLong(atomic_compare_exchange_strong_explicit(A64(a), &e, (uint64_t)desired,
                                                                   memory_order_seq_cst, memory_order_seq_cst));
}

static PyObject *n_cas32(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *ao; unsigned int expected, desired; uintptr_t a;
    if (!PyArg_ParseTuple(args, "OII", &ao, &expected, &desired) || parse_addr32(ao, &a) < 0) return NULL;
    uint32_t e = expected;
    return PyBool_FromLong(atomic_compare_exchange_strong_explicit(A32(a), &e, (uint32_t)desired,
                                                                   memory_order_seq_cst, memory_order_seq_cst));
}

static PyObject *n_fetch_add64(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *ao; long long delta; uintptr_t a;
    if (!PyArg_ParseTuple(args, "OL", &ao, &delta) || parse_addr(ao, &a) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(atomic_fetch_add_explicit(A64(a), (uint64_t)delta, memory_order_seq_cst));
}

/* ---------------------------------------------------------------- futex */

static PyObject *n_futex_wait(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *ao; unsigned int expected; double timeout_s; uintptr_t a;
    if (!PyArg_ParseTuple(args, "OId", &ao, &expected, &timeout_s) || parse_addr32(ao, &a) < 0) return NULL;
    if (timeout_s < 0) timeout_s = 0;
    struct timespec ts = {(time_t)timeout_s, (long)((timeout_s - (double)(time_t)timeout_s) * 1e9)};
    long r;
    Py_BEGIN_ALLOW_THREADS
    r = futex(A32(a), FUTEX_WAIT, expected, &ts);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(r == 0);
}

static PyObject *n_futex_wake(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *ao; int n = INT_MAX; uintptr_t a;
    if (!PyArg_ParseTuple(args, "O|i", &ao, &n) || parse_addr32(ao, &a) < 0) return NULL;
    return PyLong_FromLong(futex(A32(a), FUTEX_WAKE, (uint32_t)n, NULL));
}

/* ---------------------------------------------------------------- the wait */

/* Set by spin_then_sleep when its last yield ran another thread on this CPU (per thread). */
static _Thread_local int yield_hint = 0;
#define YIELD_RAN_OTHER_NS 1500ull
/* How long a spin only polls (reading the clock between checks) before it pauses and yields,
   unless the hint says the peer shares this CPU. A sched_yield is a system call (a few hundred
   ns here) during which a signal that arrives goes unseen, and a peer on another CPU usually
   answers within this. No pause either: under KVM a run of pauses longer than the
   pause-loop-exit window (about 4,096 cycles) makes the host deschedule this vCPU. */
#define QUIET_SPIN_NS 3000ull

/* Spin (poll for QUIET_SPIN_NS, then pause and sched_yield, so a peer on the same CPU can run) for
   spin_ns, then announce sleep, re-check, and sleep on the futex until timeout.
   Called without the GIL. Returns WAIT_*; *waited_ns is the time spent. */
/* Python runs signal handlers in the main thread only, and a POSIX signal interrupts a futex sleep
   only if it comes during the system call: one that came while the thread spun, or just before it
   called FUTEX_WAIT, would wait for the sleep's end (a whole timeout) to be handled, so SIGTERM or
   Ctrl-C seemed ignored. The main thread therefore sleeps in slices of at most SIGNAL_SLICE_NS and
   lets its caller check Python's signals between them (WAIT_SLICE); 20 wake-ups a second while idle.
   Other threads sleep whole. (On Linux the main thread's id is the process id.) */
#define SIGNAL_SLICE_NS 50000000ull
static int in_main_thread(void) { return (pid_t)syscall(SYS_gettid) == getpid(); }

int spin_then_sleep(const FifoMap *m, uint64_t spin_ns, double timeout_s, int sleep_ok, uint64_t *waited_ns) {
    int result = WAIT_TIMEOUT;
    uint64_t start = now_ns();
    uint64_t deadline = start + (uint64_t)(timeout_s * 1e9);
    uint64_t spin_end = start + spin_ns;
    if (spin_end > deadline || !sleep_ok) spin_end = deadline;
    unsigned iter = 0;
    /* A yield that took long ran another thread on this CPU: likely the peer we wait for
       (both on one CPU). Then pausing only delays it: yield at every check, in this wait
       and, through the thread's hint, from the start of the next; a fast yield clears it. */
    int shared = yield_hint, yielded = 0;
    unsigned every = shared ? 1 : 16;
    if (!shared) {  /* the quiet spin: no pause either (see QUIET_SPIN_NS) */
        uint64_t quiet_end = start + QUIET_SPIN_NS < spin_end ? start + QUIET_SPIN_NS : spin_end;
        while (now_ns() < quiet_end)
            if (fifo_ready(m)) { result = WAIT_READY; goto done; }
    }
    for (;;) {
        if (fifo_ready(m)) { result = WAIT_READY; goto done; }
        if (++iter % every == 0) {
            uint64_t t = now_ns();
            if (t >= spin_end) break;
            sched_yield();
            yielded = 1;
            shared = now_ns() - t > YIELD_RAN_OTHER_NS;
            if (shared) every = 1;
        } else {
            cpu_relax();
        }
    }
    au32 *sleep = A32(m->base + FIFO_SLEEP);
    uint64_t unsettled_since = 0;  /* when the FIFO was first seen unsettled in this wait, 0: not */
    int slices = sleep_ok && in_main_thread();
    while (sleep_ok) {
        uint64_t t = now_ns();
        if (t >= deadline) break;
        /* seq_cst: Drepper's handshake with the push (see fifo_push): announce, then re-check;
           a read-modify-write, so no producer's generation bump is lost (see fifo_wake) */
        uint32_t announced = atomic_fetch_or_explicit(sleep, 1, memory_order_seq_cst) | 1;
        if (fifo_ready(m)) { result = WAIT_READY; break; }
        uint64_t left = deadline - t;
        /* a claimed-but-unpublished head cell, or words a peer wrote: poll every 10 ms, and after
           9 ms of it let the caller look (fifo_skip_stalled: it retires the cell of a dead
           producer, repairs what a peer wrote) */
        if (fifo_unsettled(m)) {
            if (!unsettled_since) unsettled_since = t;
            else if (t - unsettled_since >= 9000000ull) { result = WAIT_STALLED; break; }
            if (left > 10000000ull) left = 10000000ull;
        } else {
            unsettled_since = 0;
        }
        int sliced = slices && left > SIGNAL_SLICE_NS;
        if (sliced) left = SIGNAL_SLICE_NS;
        struct timespec ts = {(time_t)(left / 1000000000ull), (long)(left % 1000000000ull)};
        long fr = futex(sleep, FUTEX_WAIT, announced, &ts);  /* not if a producer bumped it since */
        if (fifo_ready(m)) { result = WAIT_READY; break; }
        if (fr == -1 && errno == EINTR) { result = WAIT_INTERRUPTED; break; }
        if (sliced) { result = WAIT_SLICE; break; }
    }
    /* clear the state (keep the generation); relaxed: only a hint to producers, one that still
       reads "asleep" costs one needless futex wake */
    atomic_fetch_and_explicit(sleep, ~SLEEP_STATE, memory_order_relaxed);
done:
    if (yielded) yield_hint = shared;
    *waited_ns = now_ns() - start;
    return result;
}

/* Wait (GIL released) until FIFO f has an entry or timeout_s passed: WAIT_READY, WAIT_TIMEOUT or
   WAIT_STALLED, with *waited_ns the time spent; -1 with an exception if a POSIX signal's Python
   handler raised (e.g. KeyboardInterrupt). A signal whose handler returns resumes the wait. */
int wait_signal(const FifoMap *m, uint64_t spin_ns, double timeout_s, int sleep_ok, uint64_t *waited_ns) {
    int r = WAIT_READY;
    *waited_ns = 0;
    while (!fifo_ready(m)) {
        uint64_t w = 0;
        Py_BEGIN_ALLOW_THREADS
        r = spin_then_sleep(m, spin_ns, timeout_s, sleep_ok, &w);
        Py_END_ALLOW_THREADS
        *waited_ns += w;
        if (r != WAIT_INTERRUPTED && r != WAIT_SLICE) break;
        if (PyErr_CheckSignals() < 0) return -1;
        timeout_s -= (double)w * 1e-9;
        spin_ns = 0;  /* it spun already: straight back to sleep */
        r = WAIT_TIMEOUT;
        if (timeout_s <= 0) break;
    }
    return r;
}

/* (spin_ns, timeout_s[, sleep_ok]) at args[0..n): timeout clamped to [0, 1e9], sleep_ok default True. */
int parse_wait_policy(PyObject *const *args, Py_ssize_t n, uint64_t *spin_ns, double *timeout_s, int *sleep_ok) {
    *spin_ns = PyLong_AsUnsignedLongLong(args[0]);
    if (*spin_ns == (uint64_t)-1 && PyErr_Occurred()) return -1;
    *timeout_s = PyFloat_AsDouble(args[1]);
    if (*timeout_s == -1.0 && PyErr_Occurred()) return -1;
    if (*timeout_s < 0 || *timeout_s != *timeout_s) *timeout_s = 0;
    if (*timeout_s > 1e9) *timeout_s = 1e9;
    *sleep_ok = n == 3 ? PyObject_IsTrue(args[2]) : 1;
    return *sleep_ok < 0 ? -1 : 0;
}

static PyMethodDef sync_functions[] = {
    {"addr_of", n_addr_of, METH_O, "address of a buffer's first byte (the buffer must outlive its use)"},
    {"load64", n_load64, METH_O, "atomically load a u64 (seq_cst, so at least acquire)"},
    {"load32", n_load32, METH_O, "atomically load a u32 (seq_cst, so at least acquire)"},
    {"store64", n_store64, METH_VARARGS, "atomically store a u64 (seq_cst, so at least release)"},
    {"store32", n_store32, METH_VARARGS, "atomically store a u32 (seq_cst, so at least release)"},
    {"cas64", n_cas64, METH_VARARGS, "compare-and-swap a u64; True if swapped"},
    {"cas32", n_cas32, METH_VARARGS, "compare-and-swap a u32; True if swapped"},
    {"fetch_add64", n_fetch_add64, METH_VARARGS, "atomic fetch-add on a u64; returns the old value"},
    {"futex_wait", n_futex_wait, METH_VARARGS, "futex_wait(addr, expected, timeout_s) -> woken"},
    {"futex_wake", n_futex_wake, METH_VARARGS, "futex_wake(addr, n=all) -> number woken"},
    {NULL, NULL, 0, NULL},
};

int native_add_sync(PyObject *module) { return native_add(module, sync_functions, NULL); }
