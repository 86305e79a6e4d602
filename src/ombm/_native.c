/*
 * ombm._native: the few operations Python cannot express (DESIGN.md §3).
 *
 *   - atomic load/store/compare-and-swap/fetch-add with acquire/release
 *     ordering on shared memory (addresses are ints from ombm._layout users);
 *   - futex wait/wake on a shared (non-private) word, with the GIL released;
 *   - the signal FIFO (paper §3.1.2): a bounded multi-producer ring after
 *     D. Vyukov, one CAS per push, drop-when-full, and its spin-then-sleep wait
 *     following U. Drepper's "Futexes Are Tricky" (announce sleep, re-check,
 *     wait; a sender wakes only a receiver that announced it sleeps);
 *   - the fused copy-and-checksum of the RPC unmarshal copy (paper §4).
 *
 * Every offset used here is defined in ombm/_layout.py; the FIFO constants
 * below must match it (tests/unit/test_layout.py checks them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- FIFO layout (mirrors _layout.FIFO_*) ---- */
#define FIFO_TAIL 64      /* u64 enqueue position, own cache line */
#define FIFO_HEAD 128     /* u64 dequeue position, own cache line */
#define FIFO_SLEEP 192    /* u32 futex word: 0 awake, 1 futex sleep, 2 doorbell sleep */
#define FIFO_MASK 12      /* u32 capacity (power of two) at offset 12 */
#define FIFO_CELLS 256    /* first cell */
#define FIFO_DROPS 40     /* u64 signals dropped because the FIFO was full */
#define CELL_SIZE 32      /* u64 seq, u64 segment id, u64 offset, u64 pad */

/* push results */
#define PUSH_OK 0
#define PUSH_WOKE 1       /* pushed and issued a futex wake */
#define PUSH_DOORBELL 2   /* pushed; receiver sleeps in an event loop: ring its doorbell */
#define PUSH_FULL 3       /* dropped: FIFO full (paper: loss when full) */

/* wait results */
#define WAIT_READY 0
#define WAIT_TIMEOUT 1
#define WAIT_STALLED 2    /* tail moved but the head cell never got published */
#define WAIT_INTERRUPTED 3 /* a POSIX signal interrupted the sleep: let Python run its handlers */

typedef _Atomic uint64_t au64;
typedef _Atomic uint32_t au32;

static inline au64 *A64(uintptr_t a) { return (au64 *)a; }
static inline au32 *A32(uintptr_t a) { return (au32 *)a; }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long futex(au32 *uaddr, int op, uint32_t val, const struct timespec *ts) {
    return syscall(SYS_futex, (uint32_t *)uaddr, op, val, ts, NULL, 0);
}

static int parse_aligned(PyObject *o, uintptr_t *out, unsigned align) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (v == 0 || (v & (align - 1))) {
        PyErr_Format(PyExc_ValueError, "ombm._native: address must be non-null and %u-byte aligned", align);
        return -1;
    }
    *out = (uintptr_t)v;
    return 0;
}
static int parse_addr(PyObject *o, uintptr_t *out) { return parse_aligned(o, out, 8); }
static int parse_addr32(PyObject *o, uintptr_t *out) { return parse_aligned(o, out, 4); }

/* ---------------------------------------------------------------- atomics */

static PyObject *n_addr_of(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    uintptr_t a = (uintptr_t)view.buf;
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong((unsigned long long)a);
}

static PyObject *n_load64(PyObject *self, PyObject *arg) {
    uintptr_t a;
    if (parse_addr(arg, &a) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(atomic_load_explicit(A64(a), memory_order_acquire));
}

static PyObject *n_load32(PyObject *self, PyObject *arg) {
    uintptr_t a;
    if (parse_addr32(arg, &a) < 0) return NULL;
    return PyLong_FromUnsignedLong(atomic_load_explicit(A32(a), memory_order_acquire));
}

static PyObject *n_store64(PyObject *self, PyObject *args) {
    PyObject *ao; unsigned long long v; uintptr_t a;
    if (!PyArg_ParseTuple(args, "OK", &ao, &v) || parse_addr(ao, &a) < 0) return NULL;
    atomic_store_explicit(A64(a), (uint64_t)v, memory_order_release);
    Py_RETURN_NONE;
}

static PyObject *n_store32(PyObject *self, PyObject *args) {
    PyObject *ao; unsigned int v; uintptr_t a;
    if (!PyArg_ParseTuple(args, "OI", &ao, &v) || parse_addr32(ao, &a) < 0) return NULL;
    atomic_store_explicit(A32(a), (uint32_t)v, memory_order_release);
    Py_RETURN_NONE;
}

static PyObject *n_cas64(PyObject *self, PyObject *args) {
    PyObject *ao; unsigned long long expected, desired; uintptr_t a;
    if (!PyArg_ParseTuple(args, "OKK", &ao, &expected, &desired) || parse_addr(ao, &a) < 0) return NULL;
    uint64_t e = expected;
    return PyBool_FromLong(atomic_compare_exchange_strong(A64(a), &e, (uint64_t)desired));
}

static PyObject *n_cas32(PyObject *self, PyObject *args) {
    PyObject *ao; unsigned int expected, desired; uintptr_t a;
    if (!PyArg_ParseTuple(args, "OII", &ao, &expected, &desired) || parse_addr32(ao, &a) < 0) return NULL;
    uint32_t e = expected;
    return PyBool_FromLong(atomic_compare_exchange_strong(A32(a), &e, (uint32_t)desired));
}

static PyObject *n_fetch_add64(PyObject *self, PyObject *args) {
    PyObject *ao; long long delta; uintptr_t a;
    if (!PyArg_ParseTuple(args, "OL", &ao, &delta) || parse_addr(ao, &a) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(atomic_fetch_add(A64(a), (uint64_t)delta));
}

/* ---------------------------------------------------------------- futex */

static PyObject *n_futex_wait(PyObject *self, PyObject *args) {
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

static PyObject *n_futex_wake(PyObject *self, PyObject *args) {
    PyObject *ao; int n = INT_MAX; uintptr_t a;
    if (!PyArg_ParseTuple(args, "O|i", &ao, &n) || parse_addr32(ao, &a) < 0) return NULL;
    return PyLong_FromLong(futex(A32(a), FUTEX_WAKE, (uint32_t)n, NULL));
}

/* ---------------------------------------------------------------- signal FIFO */

static inline uint64_t fifo_mask(uintptr_t f) { return (uint64_t)(*(uint32_t *)(f + FIFO_MASK)) - 1; }
static inline uintptr_t fifo_cell(uintptr_t f, uint64_t pos) {
    return f + FIFO_CELLS + (uintptr_t)((pos & fifo_mask(f)) * CELL_SIZE);
}

/* Vyukov push; then the Drepper wake check. Never blocks. */
static int fifo_push(uintptr_t f, uint64_t seg, uint64_t off) {
    au64 *tail = A64(f + FIFO_TAIL);
    uint64_t pos = atomic_load_explicit(tail, memory_order_relaxed);
    uintptr_t cell;
    for (;;) {
        cell = fifo_cell(f, pos);
        uint64_t seq = atomic_load_explicit(A64(cell), memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(tail, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (dif < 0) {
            atomic_fetch_add_explicit(A64(f + FIFO_DROPS), 1, memory_order_relaxed);
            return PUSH_FULL;
        } else {
            pos = atomic_load_explicit(tail, memory_order_relaxed);
        }
    }
    ((uint64_t *)cell)[1] = seg;
    ((uint64_t *)cell)[2] = off;
    /* publish with a CAS so a consumer that skipped a stalled cell (a producer
       killed between claim and publish) is detected: the late publish is lost. */
    uint64_t expect = pos;
    if (!atomic_compare_exchange_strong_explicit(A64(cell), &expect, pos + 1, memory_order_seq_cst,
                                                 memory_order_relaxed)) {
        atomic_fetch_add_explicit(A64(f + FIFO_DROPS), 1, memory_order_relaxed);
        return PUSH_FULL;
    }
    au32 *sleep = A32(f + FIFO_SLEEP);
    if (atomic_load_explicit(sleep, memory_order_seq_cst) != 0) {
        uint32_t old = atomic_exchange(sleep, 0);
        if (old == 1) {
            futex(sleep, FUTEX_WAKE, INT_MAX, NULL);
            return PUSH_WOKE;
        }
        if (old == 2) return PUSH_DOORBELL;
    }
    return PUSH_OK;
}

static inline int fifo_ready(uintptr_t f) {
    uint64_t pos = atomic_load_explicit(A64(f + FIFO_HEAD), memory_order_relaxed);
    uint64_t seq = atomic_load_explicit(A64(fifo_cell(f, pos)), memory_order_seq_cst);
    return seq == pos + 1;
}

static inline int fifo_nonempty(uintptr_t f) {
    return atomic_load_explicit(A64(f + FIFO_TAIL), memory_order_acquire) !=
           atomic_load_explicit(A64(f + FIFO_HEAD), memory_order_acquire);
}

static PyObject *n_fifo_push(PyObject *self, PyObject *args) {
    PyObject *ao; unsigned long long seg, off; uintptr_t f;
    if (!PyArg_ParseTuple(args, "OKK", &ao, &seg, &off) || parse_addr(ao, &f) < 0) return NULL;
    return PyLong_FromLong(fifo_push(f, seg, off));
}

/* fanout(fifos, seg, off) -> 0 in the common case; else bits 0-15: drops,
   bit 16+i: target i sleeps in an event loop and needs its doorbell rung,
   bit 15: at least one futex wake was issued. */
static PyObject *n_fanout(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "fanout(tuple_of_fifos, segment_id, offset)");
        return NULL;
    }
    PyObject *tup = args[0];
    unsigned long long seg = PyLong_AsUnsignedLongLong(args[1]), off = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(tup);
    unsigned long long result = 0, drops = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uintptr_t f;
        if (parse_addr(PyTuple_GET_ITEM(tup, i), &f) < 0) return NULL;
        int r = fifo_push(f, seg, off);
        if (r == PUSH_FULL) drops++;
        else if (r == PUSH_WOKE) result |= 1ull << 15;
        else if (r == PUSH_DOORBELL && i < 40) result |= 1ull << (16 + i);
    }
    return PyLong_FromUnsignedLongLong(result | (drops > 0x7fff ? 0x7fff : drops));
}

/* Take the head entry of FIFO f: 1 and (seg, off), or 0 if there is none (or not yet published). */
static int fifo_take(uintptr_t f, uint64_t *seg, uint64_t *off) {
    au64 *head = A64(f + FIFO_HEAD);
    uint64_t pos = atomic_load_explicit(head, memory_order_relaxed);
    for (;;) {
        uintptr_t cell = fifo_cell(f, pos);
        uint64_t seq = atomic_load_explicit(A64(cell), memory_order_acquire);
        int64_t dif = (int64_t)(seq - (pos + 1));
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(head, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed)) {
                *seg = ((uint64_t *)cell)[1];
                *off = ((uint64_t *)cell)[2];
                atomic_store_explicit(A64(cell), pos + fifo_mask(f) + 1, memory_order_release);
                return 1;
            }
        } else if (dif < 0) {
            return 0;
        } else {
            pos = atomic_load_explicit(head, memory_order_relaxed);
        }
    }
}

/* pop the head entry: (segment id, offset) (+ waited_ns if waited != UINT64_MAX), or None. */
static PyObject *pop_tuple(uintptr_t f, uint64_t waited) {
    uint64_t seg, off;
    if (!fifo_take(f, &seg, &off)) Py_RETURN_NONE;
    if (waited == UINT64_MAX) return Py_BuildValue("(KK)", (unsigned long long)seg, (unsigned long long)off);
    return Py_BuildValue("(KKK)", (unsigned long long)seg, (unsigned long long)off, (unsigned long long)waited);
}

/* pop -> (segment id, offset) or None when empty (or head cell not yet published). */
static PyObject *n_fifo_pop(PyObject *self, PyObject *arg) {
    uintptr_t f;
    if (parse_addr(arg, &f) < 0) return NULL;
    return pop_tuple(f, UINT64_MAX);
}

/* skip_stalled: the head cell was claimed by a producer that never published
   (killed mid-push). Retire it so later signals flow; True if skipped. */
static PyObject *n_fifo_skip_stalled(PyObject *self, PyObject *arg) {
    uintptr_t f;
    if (parse_addr(arg, &f) < 0) return NULL;
    au64 *head = A64(f + FIFO_HEAD);
    uint64_t pos = atomic_load_explicit(head, memory_order_acquire);
    if (atomic_load_explicit(A64(f + FIFO_TAIL), memory_order_acquire) == pos) Py_RETURN_FALSE;
    uintptr_t cell = fifo_cell(f, pos);
    uint64_t expect = pos;
    if (!atomic_compare_exchange_strong(A64(cell), &expect, pos + fifo_mask(f) + 1)) Py_RETURN_FALSE;
    atomic_store_explicit(head, pos + 1, memory_order_release);
    Py_RETURN_TRUE;
}

/* Set by do_wait when its last yield ran another thread on this CPU (per thread). */
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
static int do_wait(uintptr_t f, uint64_t spin_ns, double timeout_s, int sleep_ok, uint64_t *waited_ns) {
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
            if (fifo_ready(f)) { result = WAIT_READY; goto done; }
    }
    for (;;) {
        if (fifo_ready(f)) { result = WAIT_READY; goto done; }
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
    au32 *sleep = A32(f + FIFO_SLEEP);
    while (sleep_ok) {
        uint64_t t = now_ns();
        if (t >= deadline) break;
        atomic_store_explicit(sleep, 1, memory_order_seq_cst);
        if (fifo_ready(f)) { result = WAIT_READY; break; }
        uint64_t left = deadline - t;
        int stalled = fifo_nonempty(f);
        /* a claimed-but-unpublished head cell: poll every 10 ms so the caller
           can retire it if its producer died */
        if (stalled && left > 10000000ull) left = 10000000ull;
        struct timespec ts = {(time_t)(left / 1000000000ull), (long)(left % 1000000000ull)};
        long fr = futex(sleep, FUTEX_WAIT, 1, &ts);
        if (fifo_ready(f)) { result = WAIT_READY; break; }
        if (fr == -1 && errno == EINTR) { result = WAIT_INTERRUPTED; break; }
        if (stalled && fifo_nonempty(f) && now_ns() - t >= 9000000ull) { result = WAIT_STALLED; break; }
    }
    atomic_store_explicit(sleep, 0, memory_order_relaxed);
done:
    if (yielded) yield_hint = shared;
    *waited_ns = now_ns() - start;
    return result;
}

/* (spin_ns, timeout_s[, sleep_ok]) at args[0..n): timeout clamped to [0, 1e9], sleep_ok default True. */
static int parse_wait_policy(PyObject *const *args, Py_ssize_t n, uint64_t *spin_ns, double *timeout_s,
                             int *sleep_ok) {
    *spin_ns = PyLong_AsUnsignedLongLong(args[0]);
    if (*spin_ns == (uint64_t)-1 && PyErr_Occurred()) return -1;
    *timeout_s = PyFloat_AsDouble(args[1]);
    if (*timeout_s == -1.0 && PyErr_Occurred()) return -1;
    if (*timeout_s < 0 || *timeout_s != *timeout_s) *timeout_s = 0;
    if (*timeout_s > 1e9) *timeout_s = 1e9;
    *sleep_ok = n == 3 ? PyObject_IsTrue(args[2]) : 1;
    return *sleep_ok < 0 ? -1 : 0;
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

/* wait(fifo, spin_ns, timeout_s, sleep_ok=True) -> WAIT_* */
static PyObject *n_fifo_wait(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uintptr_t f; uint64_t spin_ns, waited; double timeout_s; int sleep_ok, r;
    if (parse_wait_args(args, nargs, &f, &spin_ns, &timeout_s, &sleep_ok) < 0) return NULL;
    if (fifo_ready(f)) return PyLong_FromLong(WAIT_READY);
    Py_BEGIN_ALLOW_THREADS
    r = do_wait(f, spin_ns, timeout_s, sleep_ok, &waited);
    Py_END_ALLOW_THREADS
    if (r == WAIT_INTERRUPTED && PyErr_CheckSignals() < 0) return NULL;
    return PyLong_FromLong(r == WAIT_INTERRUPTED ? WAIT_TIMEOUT : r);
}

static PyObject *pop_tuple(uintptr_t f, uint64_t waited);

/* Wait (GIL released) until FIFO f has an entry or timeout_s passed: WAIT_READY, WAIT_TIMEOUT or
   WAIT_STALLED, with *waited_ns the time spent; -1 with an exception if a POSIX signal's Python
   handler raised (e.g. KeyboardInterrupt). A signal whose handler returns resumes the wait. */
static int wait_signal(uintptr_t f, uint64_t spin_ns, double timeout_s, int sleep_ok, uint64_t *waited_ns) {
    int r = WAIT_READY;
    *waited_ns = 0;
    while (!fifo_ready(f)) {
        uint64_t w = 0;
        Py_BEGIN_ALLOW_THREADS
        r = do_wait(f, spin_ns, timeout_s, sleep_ok, &w);
        Py_END_ALLOW_THREADS
        *waited_ns += w;
        if (r != WAIT_INTERRUPTED) break;
        if (PyErr_CheckSignals() < 0) return -1;
        timeout_s -= (double)w * 1e-9;
        r = WAIT_TIMEOUT;
        if (timeout_s <= 0) break;
    }
    return r;
}

/* wait_pop(fifo, spin_ns, timeout_s, sleep_ok=True) -> (segment id, offset, waited_ns) or WAIT_* int */
static PyObject *n_fifo_wait_pop(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uintptr_t f; uint64_t spin_ns, waited; double timeout_s; int sleep_ok;
    if (parse_wait_args(args, nargs, &f, &spin_ns, &timeout_s, &sleep_ok) < 0) return NULL;
    int r = wait_signal(f, spin_ns, timeout_s, sleep_ok, &waited);
    if (r < 0) return NULL;
    if (r != WAIT_READY) return PyLong_FromLong(r);
    PyObject *t = pop_tuple(f, waited);
    if (t == Py_None) { Py_DECREF(t); return PyLong_FromLong(WAIT_TIMEOUT); }
    return t;
}

/* ---------------------------------------------------------------- checksum */

/* 64-bit Fletcher over little-endian 8-byte words (last word zero-padded), finished by
   mixing both sums and the length through MurmurHash3's 64-bit finalizer (a bijection
   that spreads every input bit over the result): fast, order-sensitive, the same result
   for checksum(src) and copy_checksum(dst, src). A plain XOR fold of the two sums lets
   a change in the last word cancel out (a change of bits k and k+32 in both sums), which
   is exactly what a checksum of a checksum produces. */
static inline uint64_t fmix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

static inline uint64_t fold(uint64_t a, uint64_t b, Py_ssize_t n) {
    return fmix64(a ^ fmix64(b + (uint64_t)n * 0x9E3779B97F4A7C15ull));
}

static uint64_t sum_copy(unsigned char *dst, const unsigned char *src, Py_ssize_t n) {
    uint64_t a = 0, b = 0, w;
    Py_ssize_t i = 0;
    /* four words a step: the same sums as one word at a time (b gains 4a + 4w0 + 3w1 + 2w2 + w3),
       without the word-to-word dependency of the plain loop */
    for (; i + 32 <= n; i += 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, src + i, 8); memcpy(&w1, src + i + 8, 8);
        memcpy(&w2, src + i + 16, 8); memcpy(&w3, src + i + 24, 8);
        if (dst) memcpy(dst + i, src + i, 32);
        b += 4 * (a + w0) + 3 * w1 + 2 * w2 + w3;
        a += w0 + w1 + w2 + w3;
    }
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, src + i, 8);
        if (dst) memcpy(dst + i, &w, 8);
        a += w;
        b += a;
    }
    if (i < n) {
        w = 0;
        memcpy(&w, src + i, (size_t)(n - i));
        if (dst) memcpy(dst + i, src + i, (size_t)(n - i));
        a += w;
        b += a;
    }
    return fold(a, b, n);
}

static PyObject *n_checksum(PyObject *self, PyObject *arg) {
    Py_buffer v;
    if (PyObject_GetBuffer(arg, &v, PyBUF_SIMPLE) < 0) return NULL;
    uint64_t s;
    if (v.len < 65536) {
        s = sum_copy(NULL, v.buf, v.len);
    } else {
        Py_BEGIN_ALLOW_THREADS
        s = sum_copy(NULL, v.buf, v.len);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&v);
    return PyLong_FromUnsignedLongLong(s);
}

/* copy_checksum(dst, src): copy src into the start of dst and return the checksum
   of what was read, computed in the same pass (paper §4, integrated layer processing). */
static PyObject *n_copy_checksum(PyObject *self, PyObject *args) {
    PyObject *dsto, *srco;
    if (!PyArg_ParseTuple(args, "OO", &dsto, &srco)) return NULL;
    Py_buffer d, s;
    if (PyObject_GetBuffer(dsto, &d, PyBUF_WRITABLE) < 0) return NULL;
    if (PyObject_GetBuffer(srco, &s, PyBUF_SIMPLE) < 0) { PyBuffer_Release(&d); return NULL; }
    if (d.len < s.len) {
        PyBuffer_Release(&d); PyBuffer_Release(&s);
        PyErr_SetString(PyExc_ValueError, "copy_checksum: destination smaller than source");
        return NULL;
    }
    uint64_t sum;
    if (s.len < 65536) {
        sum = sum_copy(d.buf, s.buf, s.len);
    } else {
        Py_BEGIN_ALLOW_THREADS
        sum = sum_copy(d.buf, s.buf, s.len);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&d); PyBuffer_Release(&s);
    return PyLong_FromUnsignedLongLong(sum);
}

/* ---------------------------------------------------------------- RPC frames (rpc/wire.py) */

/* The 48-byte trailer that ends every frame (little-endian; see rpc/wire.py):
   0 connection id u64 | 8 message id u64 | 16 ack u64 | 24 payload length u32 | 28 credit u32 |
   32 fragment index u16 | 34 fragment count u16 | 36 kind u8 | 37 flags u8 | 38 magic u16 |
   40 checksum u64 over payload + trailer[0:40]. */
#define TRAILER 48
#define TRAILER_HEAD 40
#define FRAME_MAGIC 0x4F01

static inline void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t get16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* A frame as bytes: payload + trailer (fragment index/count, credit as given). */
static PyObject *frame_bytes(unsigned kind, uint64_t conn, uint64_t msg, const void *payload, Py_ssize_t plen,
                             unsigned idx, unsigned count, uint64_t ack, uint32_t credit) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, plen + TRAILER);
    if (!out) return NULL;
    unsigned char *d = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(d, payload, (size_t)plen);
    unsigned char *t = d + plen;
    put64(t, conn); put64(t + 8, msg); put64(t + 16, ack);
    put32(t + 24, (uint32_t)plen); put32(t + 28, credit);
    put16(t + 32, (uint16_t)idx); put16(t + 34, (uint16_t)count);
    t[36] = (unsigned char)kind; t[37] = 0; put16(t + 38, FRAME_MAGIC);
    put64(t + 40, sum_copy(NULL, d, plen + TRAILER_HEAD));
    return out;
}

/* frame_encode(kind, connection_id, message_id, payload, frag_index, frag_count, ack, credit) -> bytes */
static PyObject *n_frame_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "frame_encode takes 8 arguments");
        return NULL;
    }
    long kind = PyLong_AsLong(args[0]);
    unsigned long long conn = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long msg = PyLong_AsUnsignedLongLong(args[2]);
    long idx = PyLong_AsLong(args[4]), count = PyLong_AsLong(args[5]);
    unsigned long long ack = PyLong_AsUnsignedLongLong(args[6]);
    long long credit = PyLong_AsLongLong(args[7]);
    if (PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "frame field out of range");
        }
        return NULL;
    }
    if (kind < 1 || kind > 255 || idx < 0 || idx >= count || count > 0xFFFF || credit < 0 || credit > 0xFFFFFFFFll) {
        PyErr_SetString(PyExc_ValueError, "bad frame kind, fragment or credit");
        return NULL;
    }
    Py_buffer p;
    if (PyObject_GetBuffer(args[3], &p, PyBUF_SIMPLE) < 0) return NULL;
    if (p.len > 0xFFFFFFFFll) {
        PyBuffer_Release(&p);
        PyErr_SetString(PyExc_ValueError, "payload too large for a frame");
        return NULL;
    }
    PyObject *out = frame_bytes((unsigned)kind, conn, msg, p.buf, p.len, (unsigned)idx, (unsigned)count, ack,
                                (uint32_t)credit);
    PyBuffer_Release(&p);
    return out;
}

/* frame_decode(view, kinds) -> (kind, connection id, message id, frag index, frag count, ack,
   payload bytearray, credit). The frame ends at the end of `view`, which may be shared memory a
   hostile peer writes: the length is read once and bounds-checked, payload + trailer are copied
   once into private memory with the checksum folded into the copy (paper §4), and every field is
   then read from the private copy. `kinds[k]` is the object returned for kind k (None: invalid).
   Raises ValueError on anything wrong. */
static PyObject *decode_frame(const unsigned char *b, Py_ssize_t n, PyObject *kinds) {
    if (n < TRAILER) {
        PyErr_SetString(PyExc_ValueError, "buffer too short for a frame trailer");
        return NULL;
    }
    uint32_t plen = get32(b + n - 24);
    uint64_t total = get64(b + n - 8);
    if ((Py_ssize_t)plen > n - TRAILER) {
        PyErr_SetString(PyExc_ValueError, "payload length overruns the buffer");
        return NULL;
    }
    PyObject *copy = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)plen + TRAILER_HEAD);
    if (!copy) return NULL;
    unsigned char *c = (unsigned char *)PyByteArray_AS_STRING(copy);
    if (sum_copy(c, b + n - TRAILER - plen, (Py_ssize_t)plen + TRAILER_HEAD) != total) {
        Py_DECREF(copy);
        PyErr_SetString(PyExc_ValueError, "checksum mismatch (corrupt, torn or overwritten frame)");
        return NULL;
    }
    const unsigned char *t = c + plen;
    uint16_t idx = get16(t + 32), count = get16(t + 34), magic = get16(t + 38);
    unsigned kind = t[36];
    if (magic != FRAME_MAGIC || t[37] != 0 || get32(t + 24) != plen || idx >= count) {
        Py_DECREF(copy);
        PyErr_SetString(PyExc_ValueError, "malformed trailer (magic, flags, length or fragment)");
        return NULL;
    }
    if (kind >= (unsigned)PyTuple_GET_SIZE(kinds) || PyTuple_GET_ITEM(kinds, kind) == Py_None) {
        Py_DECREF(copy);
        PyErr_SetString(PyExc_ValueError, "unknown frame kind");
        return NULL;
    }
    PyObject *kobj = PyTuple_GET_ITEM(kinds, kind);
    unsigned long long conn = get64(t), msg = get64(t + 8), ack = get64(t + 16);
    unsigned long credit = get32(t + 28);
    if (PyByteArray_Resize(copy, plen) < 0) { Py_DECREF(copy); return NULL; }
    return Py_BuildValue("(OKKiiKNk)", kobj, conn, msg, (int)idx, (int)count, ack, copy, credit);
}

static PyObject *n_frame_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "frame_decode(view, kinds_tuple)");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *r = decode_frame(v.buf, v.len, args[1]);
    PyBuffer_Release(&v);
    return r;
}

/* ---------------------------------------------------------------- the message write (segment.py) */

/* Signals pushed by Writer objects (ombm.stats() adds them to the Python counters). */
static unsigned long long writer_signals_sent = 0;

/* Writer: Region.write's fast path (paper §3.3). Copies the data into the bound segment and,
   for each signalling unit whose last byte it wrote, pushes (segment id, unit offset) into the
   FIFO of every receiver watching that unit: the route, cached per unit offset and dropped
   whenever the segment's directory version moves. The routes come from the segment's Python
   Router; anything out of the ordinary goes back to Python: a write the fast path does not
   take (bad arguments, a closed binding: `slow` raises the documented errors), a route with a
   software-only receiver (`deliver`), and a fan-out that dropped, woke or must ring a doorbell
   (`after`). Each cached route keeps the FIFO mappings it points into alive. */
typedef struct {
    PyObject_HEAD
    unsigned char *base;      /* NULL once closed */
    Py_ssize_t size;
    Py_ssize_t unit;          /* signal-on-write unit, 0: this binding raises no signal */
    uintptr_t version_addr;
    uint64_t version;
    unsigned long long seg_id;
    PyObject *routes;         /* dict: unit offset -> (fifo addresses, memory refs, kernel refs) */
    PyObject *slow, *route_fn, *deliver_fn, *after_fn;
    Py_ssize_t next_unit;     /* send(): the unit the next message ends (round robin) */
} Writer;

static int Writer_init(Writer *w, PyObject *args, PyObject *kw) {
    unsigned long long base, version_addr, seg_id;
    Py_ssize_t size, unit;
    PyObject *slow, *route_fn, *deliver_fn, *after_fn;
    if (!PyArg_ParseTuple(args, "KnnKKOOOO", &base, &size, &unit, &version_addr, &seg_id, &slow, &route_fn,
                          &deliver_fn, &after_fn))
        return -1;
    if (!base || size < 0 || unit < 0 || !version_addr || (version_addr & 7)) {
        PyErr_SetString(PyExc_ValueError, "Writer: bad base, size, unit or version address");
        return -1;
    }
    w->base = (unsigned char *)(uintptr_t)base;
    w->size = size;
    w->unit = unit;
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

static void Writer_dealloc(Writer *w) {
    PyObject_GC_UnTrack(w);
    Writer_clear(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

/* Signal every receiver watching the unit at `start`: 0, or -1 with an exception set. */
static int writer_deliver(Writer *w, Py_ssize_t start) {
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
            PyErr_SetString(PyExc_TypeError, "Writer: route must be (addresses, memory refs, kernel refs)");
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
    PyObject *addrs = PyTuple_GET_ITEM(route, 0);
    Py_ssize_t n = PyTuple_GET_SIZE(addrs);
    unsigned long long result = 0, drops = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uintptr_t f;
        if (parse_addr(PyTuple_GET_ITEM(addrs, i), &f) < 0) { rc = -1; goto out; }
        int r = fifo_push(f, w->seg_id, (uint64_t)start);
        if (r == PUSH_FULL) drops++;
        else if (r == PUSH_WOKE) result |= 1ull << 15;
        else if (r == PUSH_DOORBELL && i < 40) result |= 1ull << (16 + i);
    }
    writer_signals_sent += (unsigned long long)n;
    result |= drops > 0x7fff ? 0x7fff : drops;
    if (result) {  /* drops to count (and maybe a dead receiver), a wake-up to count, a doorbell */
        PyObject *ro = PyLong_FromUnsignedLongLong(result);
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

/* Copy n bytes to end at the end of the next unit (round robin), raising that unit's signal:
   an RPC channel's send (rpc/channel.py), whose units are its slots. 0, or -1 with an exception. */
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

static int writer_send(Writer *w, const char *src, Py_ssize_t n) {
    Py_ssize_t start = writer_next_unit(w, n);
    if (start < 0) return -1;
    memcpy(w->base + start + w->unit - n, src, (size_t)n);
    return n ? writer_deliver(w, start) : 0;
}

/* Write one whole RPC frame (see rpc/wire.py) of `payload` into the next unit, raising its
   signal: the payload and trailer go straight into the slot and the checksum is summed there,
   the last 8 bytes written (no frame built aside). Whoever could change the slot meanwhile is
   its reader, who only spoils its own copy. 0, or -1 with an exception. */
static int writer_send_frame(Writer *w, unsigned kind, uint64_t conn, uint64_t msg, uint64_t ack,
                             const char *payload, Py_ssize_t plen) {
    Py_ssize_t n = plen + TRAILER;
    Py_ssize_t start = writer_next_unit(w, n);
    if (start < 0) return -1;
    unsigned char *d = w->base + start + w->unit - n, *t = d + plen;
    memcpy(d, payload, (size_t)plen);
    put64(t, conn); put64(t + 8, msg); put64(t + 16, ack);
    put32(t + 24, (uint32_t)plen); put32(t + 28, 0);
    put16(t + 32, 0); put16(t + 34, 1);
    t[36] = (unsigned char)kind; t[37] = 0; put16(t + 38, FRAME_MAGIC);
    put64(t + 40, sum_copy(NULL, d, plen + TRAILER_HEAD));
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

static PyObject *Writer_close(Writer *w, PyObject *unused) {
    w->base = NULL;
    if (w->routes) PyDict_Clear(w->routes);
    Py_RETURN_NONE;
}

static PyObject *n_writer_counters(PyObject *self, PyObject *unused) {
    return PyLong_FromUnsignedLongLong(writer_signals_sent);
}

static PyObject *n_writer_counters_reset(PyObject *self, PyObject *unused) {
    writer_signals_sent = 0;
    Py_RETURN_NONE;
}

static PyMethodDef Writer_methods[] = {
    {"write", (PyCFunction)(void (*)(void))Writer_write, METH_FASTCALL,
     "write(offset, data): copy data in, then signal every unit whose last byte it wrote"},
    {"send", (PyCFunction)Writer_send, METH_O,
     "send(data): write data to end at the end of the next unit (round robin): that unit's one signal"},
    {"close", (PyCFunction)Writer_close, METH_NOARGS, "stop writing: every later write takes the slow path"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Writer(base, size, unit, version_address, segment_id, slow, route, deliver, after): "
              "the fast path of Region.write",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_traverse = (traverseproc)Writer_traverse,
    .tp_clear = (inquiry)Writer_clear,
    .tp_methods = Writer_methods,
};


/* ---------------------------------------------------------------- the RPC call lane (rpc/client.py) */

/* CallLane: a synchronous RPC call's no-loss path in one native call (paper §4: the timer
   and the rest of the transport cost nothing when nothing is lost).

   While nothing else of the client is outstanding, the Python ClientProtocol *lends* the lane
   its call ids (lend(next_id, patience)): from then on call(method, args, kwargs, ...) takes the
   next id itself, marshals the call with the lane's own msgpack Packer (the caller leads the
   client's receiver, so one thread at a time), writes one CALL frame acking everything before
   it straight into the next request slot (its last byte signals the server), waits (spin, then
   futex sleep) on the caller's signal FIFO and takes the reply: the frame in the reply slot the
   signal names, copied out once with its checksum folded into the copy, and accepted only if it
   is a whole REPLY or ERROR_REPLY of this connection and call. A REPLY that unmarshals to
   [0, result] (unpack(payload, ext_hook=..., strict_map_key=False)) is the call's value; the
   lane counts the call and remembers its round trip, and that is all the protocol would have
   done. reclaim() gives the protocol its state back: the next id, the calls made, the call in
   progress if any, the last round trip.

   Everything else is handed back to Python untouched by policy, with the call id when the call
   is now the protocol's to settle: the raw reply (an error, or a reply the native unmarshal
   refused: Python's decode raises the documented error), a signal for another segment or a frame
   the lane does not take (LANE_OTHER, with the signal), no signal within the patience
   (LANE_TIMEOUT), a call that does not marshal or fit one frame (LANE_UNSENT: nothing written,
   no id taken), or no lent state (LANE_NOT_LENT). */
#define LANE_VALUE 0       /* in the order Python tests them: <= LANE_ERROR_REPLY is a reply */
#define LANE_REPLY 1
#define LANE_ERROR_REPLY 2
#define LANE_OTHER 3
#define LANE_TIMEOUT 4
#define LANE_UNSENT 5
#define LANE_NOT_LENT 6

typedef struct {
    PyObject_HEAD
    Writer *request;          /* the request channel's writer; NULL once closed */
    uintptr_t fifo;           /* the caller's signal FIFO */
    unsigned long long reply_seg;
    const unsigned char *reply_base;
    Py_ssize_t reply_size, reply_slot;
    unsigned long long connection_id;
    Py_ssize_t max_payload;   /* the largest message in one frame */
    PyObject *pack, *reset;   /* the call marshaller: a msgpack Packer's pack and reset (the lane's own) */
    PyObject *unpack, *ext_hook, *kwnames;  /* the reply unmarshaller (msgpack.unpackb) */
    PyObject *message;        /* the last call's marshalled message (None before the first) */
    /* the protocol state lent by lend(), given back by reclaim() */
    int lent;
    unsigned long long next_id, calls, current;  /* current: the call on its way, 0 if none */
    uint64_t rtt_ns;          /* the last call's round trip, 0 if none since lend() */
    double patience_s;        /* how long a call waits on the lane before it goes to the timer */
} CallLane;

static int CallLane_init(CallLane *l, PyObject *args, PyObject *kw) {
    PyObject *writer, *fifo_o, *packer, *unpack, *ext_hook;
    unsigned long long reply_seg, reply_base, conn;
    Py_ssize_t reply_size, reply_slot, max_payload;
    if (!PyArg_ParseTuple(args, "O!OKKnnKnOOO", &WriterType, &writer, &fifo_o, &reply_seg, &reply_base, &reply_size,
                          &reply_slot, &conn, &max_payload, &packer, &unpack, &ext_hook))
        return -1;
    if (max_payload < 0 || max_payload + TRAILER > ((Writer *)writer)->unit) {
        PyErr_SetString(PyExc_ValueError, "CallLane: max_payload does not fit the request channel's slots");
        return -1;
    }
    uintptr_t f;
    if (parse_addr(fifo_o, &f) < 0) return -1;
    if (!reply_base || reply_slot < TRAILER || reply_size < reply_slot) {
        PyErr_SetString(PyExc_ValueError, "CallLane: bad reply channel geometry");
        return -1;
    }
    if (!PyCallable_Check(unpack)) {
        PyErr_SetString(PyExc_TypeError, "CallLane: unpack must be callable");
        return -1;
    }
    PyObject *pack = PyObject_GetAttrString(packer, "pack");
    PyObject *reset = pack ? PyObject_GetAttrString(packer, "reset") : NULL;
    PyObject *kwnames = Py_BuildValue("(ss)", "ext_hook", "strict_map_key");
    if (!pack || !reset || !kwnames) {
        Py_XDECREF(pack); Py_XDECREF(reset); Py_XDECREF(kwnames);
        return -1;
    }
    Py_XSETREF(l->pack, pack);
    Py_XSETREF(l->reset, reset);
    Py_XSETREF(l->kwnames, kwnames);
    Py_INCREF(Py_None);
    Py_XSETREF(l->message, Py_None);
    l->lent = 0;
    l->calls = l->current = 0;
    l->rtt_ns = 0;
    l->max_payload = max_payload;
    Py_INCREF(writer);
    Py_XSETREF(l->request, (Writer *)writer);
    Py_INCREF(unpack);
    Py_XSETREF(l->unpack, unpack);
    Py_INCREF(ext_hook);
    Py_XSETREF(l->ext_hook, ext_hook);
    l->fifo = f;
    l->reply_seg = reply_seg;
    l->reply_base = (const unsigned char *)(uintptr_t)reply_base;
    l->reply_size = reply_size;
    l->reply_slot = reply_slot;
    l->connection_id = conn;
    return 0;
}

static int CallLane_traverse(CallLane *l, visitproc visit, void *arg) {
    Py_VISIT(l->request); Py_VISIT(l->pack); Py_VISIT(l->reset); Py_VISIT(l->unpack); Py_VISIT(l->ext_hook);
    Py_VISIT(l->kwnames); Py_VISIT(l->message);
    return 0;
}
static int CallLane_clear(CallLane *l) {
    Py_CLEAR(l->request); Py_CLEAR(l->pack); Py_CLEAR(l->reset); Py_CLEAR(l->unpack); Py_CLEAR(l->ext_hook);
    Py_CLEAR(l->kwnames); Py_CLEAR(l->message);
    return 0;
}
static void CallLane_dealloc(CallLane *l) {
    PyObject_GC_UnTrack(l);
    CallLane_clear(l);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

/* The reply in the slot at `off` if it is a whole REPLY/ERROR_REPLY of this connection and call:
   a new bytes object with its payload and *kind set; NULL (no exception) otherwise. */
static PyObject *lane_take_reply(CallLane *l, uint64_t off, uint64_t call_id, unsigned *kind) {
    if (off >= (uint64_t)l->reply_size) return NULL;
    Py_ssize_t start = (Py_ssize_t)off / l->reply_slot * l->reply_slot;
    Py_ssize_t n = l->reply_slot;
    if (start + n > l->reply_size) return NULL;
    const unsigned char *b = l->reply_base + start;
    uint32_t plen = get32(b + n - 24);
    uint64_t total = get64(b + n - 8);
    if ((Py_ssize_t)plen > n - TRAILER) return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)plen + TRAILER_HEAD);
    if (!out) { PyErr_Clear(); return NULL; }
    unsigned char *c = (unsigned char *)PyBytes_AS_STRING(out);
    const unsigned char *t = c + plen;
    if (sum_copy(c, b + n - TRAILER - plen, (Py_ssize_t)plen + TRAILER_HEAD) != total ||
        get16(t + 38) != FRAME_MAGIC || t[37] != 0 || get32(t + 24) != plen || get16(t + 32) != 0 ||
        get16(t + 34) != 1 || (t[36] != 3 && t[36] != 4) || get64(t) != l->connection_id || get64(t + 8) != call_id) {
        Py_DECREF(out);
        return NULL;
    }
    *kind = t[36];
    if (_PyBytes_Resize(&out, plen) < 0) { PyErr_Clear(); return NULL; }
    return out;
}

/* The result in a REPLY payload that unmarshals to [0, result] (a new reference), or NULL
   (no exception) for anything else. */
static PyObject *lane_result(CallLane *l, PyObject *payload) {
    PyObject *argv[3] = {payload, l->ext_hook, Py_False};
    PyObject *reply = PyObject_Vectorcall(l->unpack, argv, 1, l->kwnames);
    if (!reply) {
        if (PyErr_ExceptionMatches(PyExc_Exception)) PyErr_Clear();  /* Python's decode says why */
        return NULL;
    }
    PyObject *result = NULL;
    if (PyList_CheckExact(reply) && PyList_GET_SIZE(reply) == 2) {
        PyObject *tag = PyList_GET_ITEM(reply, 0);
        int overflow;
        if (PyLong_CheckExact(tag) && PyLong_AsLongAndOverflow(tag, &overflow) == 0 && !overflow) {
            result = PyList_GET_ITEM(reply, 1);
            Py_INCREF(result);
        }
    }
    Py_DECREF(reply);
    return result;
}

/* call(method, args, kwargs, spin_ns, sleep_ok) -> (status, value, waited_ns, call_id):
   (LANE_VALUE, result, ...), (LANE_REPLY | LANE_ERROR_REPLY, payload bytes, ...),
   (LANE_OTHER, (segment id, offset), ...), (LANE_TIMEOUT, WAIT_* code, ...), (LANE_UNSENT, None,
   0, 0) or (LANE_NOT_LENT, None, 0, 0). call_id is 0 when the lane settled the call itself (a
   reply while the state stayed lent), else the id of the call the protocol must settle (a reply
   after reclaim(): end it; LANE_OTHER, LANE_TIMEOUT: adopt it). The message written stays in
   `message`. */
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
    if (!l->lent) return Py_BuildValue("(iOii)", LANE_NOT_LENT, Py_None, 0, 0);
    /* the message: (method, args, kwargs) as marshal.encode_call packs it */
    if (!PyUnicode_Check(args[0]) || !PyTuple_Check(args[1]) || !PyDict_Check(args[2]))
        return Py_BuildValue("(iOii)", LANE_UNSENT, Py_None, 0, 0);
    PyObject *triple = PyTuple_Pack(3, args[0], args[1], args[2]);
    if (!triple) return NULL;
    PyObject *message = PyObject_CallOneArg(l->pack, triple);
    Py_DECREF(triple);
    if (!message) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
        PyErr_Clear();
        PyObject *r = PyObject_CallNoArgs(l->reset);  /* never leave half a message in the buffer */
        if (!r) return NULL;
        Py_DECREF(r);
        return Py_BuildValue("(iOii)", LANE_UNSENT, Py_None, 0, 0);
    }
    if (!PyBytes_CheckExact(message) || PyBytes_GET_SIZE(message) > l->max_payload || !l->lent) {
        Py_DECREF(message);  /* (lent again: packing ran Python code, which may have reclaimed) */
        return Py_BuildValue("(iOii)", l->lent ? LANE_UNSENT : LANE_NOT_LENT, Py_None, 0, 0);
    }
    Py_XSETREF(l->message, message);
    /* the id is taken before the write, which may run Python code (a route to look up, a
       wake-up to count) and so let another thread reclaim the state */
    unsigned long long call_id = l->next_id++;
    l->calls++;
    l->current = call_id;
    /* one CALL frame, ack = call id: the caller waits for nothing older */
    if (writer_send_frame(l->request, 1, l->connection_id, call_id, call_id, PyBytes_AS_STRING(message),
                          PyBytes_GET_SIZE(message)) < 0)
        return NULL;  /* the call stays current, for the protocol to cancel */
    uintptr_t f = l->fifo;
    uint64_t waited;
    int r = wait_signal(f, spin_ns, l->patience_s, sleep_ok, &waited);
    if (r < 0) return NULL;  /* e.g. KeyboardInterrupt: the call stays current, for the protocol to cancel */
    /* Python may have run meanwhile (another thread, a signal handler): the state may be reclaimed */
    unsigned long long settle = l->lent ? 0 : call_id;
    uint64_t seg, off;
    if (r != WAIT_READY || !fifo_take(f, &seg, &off))
        return Py_BuildValue("(iiKK)", LANE_TIMEOUT, r == WAIT_READY ? WAIT_TIMEOUT : r, (unsigned long long)waited,
                             call_id);
    if (seg == l->reply_seg) {
        unsigned kind = 0;
        PyObject *payload = lane_take_reply(l, off, call_id, &kind);
        if (payload) {
            if (!settle) {  /* the call is over: what the protocol's end_call would do */
                l->current = 0;
                l->rtt_ns = waited ? waited : 1;
            }
            if (kind == 3) {
                PyObject *result = lane_result(l, payload);
                if (result) {
                    Py_DECREF(payload);
                    return Py_BuildValue("(iNKK)", LANE_VALUE, result, (unsigned long long)waited, settle);
                }
                if (PyErr_Occurred()) { Py_DECREF(payload); return NULL; }
            }
            return Py_BuildValue("(iNKK)", kind == 4 ? LANE_ERROR_REPLY : LANE_REPLY, payload,
                                 (unsigned long long)waited, settle);
        }
    }
    return Py_BuildValue("(i(KK)KK)", LANE_OTHER, (unsigned long long)seg, (unsigned long long)off,
                         (unsigned long long)waited, call_id);
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
static PyObject *CallLane_reclaim(CallLane *l, PyObject *unused) {
    if (!l->lent) Py_RETURN_NONE;
    PyObject *current = l->current ? PyLong_FromUnsignedLongLong(l->current) : (Py_INCREF(Py_None), Py_None);
    PyObject *rtt = l->rtt_ns ? PyFloat_FromDouble((double)l->rtt_ns * 1e-9) : (Py_INCREF(Py_None), Py_None);
    if (!current || !rtt) { Py_XDECREF(current); Py_XDECREF(rtt); return NULL; }
    PyObject *r = Py_BuildValue("(KKNN)", l->next_id, l->calls, current, rtt);
    if (!r) return NULL;
    l->lent = 0;
    l->calls = l->current = 0;
    l->rtt_ns = 0;
    return r;
}

static PyObject *CallLane_close(CallLane *l, PyObject *unused) {
    Py_CLEAR(l->request);
    l->reply_base = NULL;
    Py_RETURN_NONE;
}

static PyObject *CallLane_message(CallLane *l, void *closure) {
    PyObject *m = l->message ? l->message : Py_None;
    Py_INCREF(m);
    return m;
}

static PyObject *CallLane_lent(CallLane *l, void *closure) { return PyBool_FromLong(l->lent); }

static PyGetSetDef CallLane_getset[] = {
    {"message", (getter)CallLane_message, NULL, "the last call's marshalled message (for its adoption)", NULL},
    {"lent", (getter)CallLane_lent, NULL, "whether the lane holds the protocol's state", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef CallLane_methods[] = {
    {"call", (PyCFunction)(void (*)(void))CallLane_call, METH_FASTCALL,
     "call(method, args, kwargs, spin_ns, sleep_ok) -> (status, value, waited_ns, call_id to settle or 0)"},
    {"lend", (PyCFunction)(void (*)(void))CallLane_lend, METH_FASTCALL, "lend(next_id, patience_s)"},
    {"reclaim", (PyCFunction)CallLane_reclaim, METH_NOARGS,
     "reclaim() -> (next_id, calls, current call id | None, last rtt s | None) | None"},
    {"close", (PyCFunction)CallLane_close, METH_NOARGS, "forget the channels (before they are unbound)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CallLaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.CallLane",
    .tp_basicsize = sizeof(CallLane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "CallLane(request_writer, fifo, reply_segment_id, reply_base, reply_size, reply_slot, connection_id, "
              "max_payload, packer, unpack, ext_hook)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)CallLane_init,
    .tp_dealloc = (destructor)CallLane_dealloc,
    .tp_traverse = (traverseproc)CallLane_traverse,
    .tp_clear = (inquiry)CallLane_clear,
    .tp_methods = CallLane_methods,
    .tp_getset = CallLane_getset,
};


/* ---------------------------------------------------------------- the RPC request intake (rpc/server.py) */

/* RequestIntake: the server's serving loop in one native call (paper §4: the no-loss path costs
   no protocol work). serve() waits (spin, then futex sleep) on the server's signal FIFO and takes
   signals one after another. A signal naming a registered request channel is a request: the frame
   in that slot is copied out once, its checksum folded into the copy, and every field read from the
   private copy (see frame_decode).

   The server lane. While a connection's lane is on (lane(): the Python ServerProtocol lent it the
   highest call id it delivered), a request that is one whole CALL frame of that connection, acking
   everything before it (ack == call id), and newer than every call delivered is served right here:
   execute(payload, limit) runs the method (the server's Python), and its reply, if it fits one
   frame, is written into the next reply slot and kept as the reply cache (the client's next ack
   releases it). Such a request changes the protocol state in one known way, so the lane only counts
   and remembers the last one; anything else goes back to Python with that delta (the "handback"),
   and the protocol applies it before it takes the frame (ServerProtocol.reclaim). */
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
    unsigned long long served, replied;  /* requests served on the lane since lane() */
    PyObject *reply_payload;  /* the reply to `last` if the lane served it (payload bytes), else NULL */
    unsigned reply_kind;      /* and its kind: REPLY or ERROR_REPLY */
} IntakeEntry;

static int IntakeEntry_traverse(IntakeEntry *e, visitproc visit, void *arg) {
    Py_VISIT(e->conn); Py_VISIT(e->reply); Py_VISIT(e->limit); Py_VISIT(e->reply_payload);
    return 0;
}
static int IntakeEntry_clear(IntakeEntry *e) {
    Py_CLEAR(e->conn); Py_CLEAR(e->reply); Py_CLEAR(e->limit); Py_CLEAR(e->reply_payload);
    return 0;
}
static void IntakeEntry_dealloc(IntakeEntry *e) {
    PyObject_GC_UnTrack(e);
    IntakeEntry_clear(e);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyTypeObject IntakeEntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.IntakeEntry",
    .tp_basicsize = sizeof(IntakeEntry),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "one request channel of a RequestIntake (internal)",
    .tp_dealloc = (destructor)IntakeEntry_dealloc,
    .tp_traverse = (traverseproc)IntakeEntry_traverse,
    .tp_clear = (inquiry)IntakeEntry_clear,
};

typedef struct {
    PyObject_HEAD
    uintptr_t fifo;
    PyObject *channels;       /* dict: segment id -> IntakeEntry */
    PyObject *kinds;          /* kind byte -> the object frame_decode returns for it */
    /* the server's side of a call (rpc/server.py, rpc/marshal.py) */
    PyObject *methods;        /* dict: method name -> callable */
    PyObject *stats;          /* the server's stats dict: "calls" counts the calls run here */
    PyObject *unpack, *ext_hook, *kwnames;  /* msgpack.unpackb and its keyword arguments */
    PyObject *pack, *reset;   /* a msgpack Packer's pack and reset, this loop's own */
    PyObject *execute;        /* execute(payload, limit) -> (reply payload, error): all of a call, in Python */
    PyObject *finish;         /* finish(result, exception, limit) -> (reply payload, error) */
    PyObject *calls_key, *zero, *one;
} RequestIntake;

static int RequestIntake_init(RequestIntake *x, PyObject *args, PyObject *kw) {
    PyObject *fifo_o, *kinds, *methods, *stats, *unpack, *ext_hook, *packer, *execute, *finish;
    if (!PyArg_ParseTuple(args, "OO!O!O!OOOOO", &fifo_o, &PyTuple_Type, &kinds, &PyDict_Type, &methods,
                          &PyDict_Type, &stats, &unpack, &ext_hook, &packer, &execute, &finish))
        return -1;
    if (parse_addr(fifo_o, &x->fifo) < 0) return -1;
    if (!PyCallable_Check(unpack) || !PyCallable_Check(execute) || !PyCallable_Check(finish)) {
        PyErr_SetString(PyExc_TypeError, "RequestIntake: unpack, execute and finish must be callable");
        return -1;
    }
    PyObject *pack = PyObject_GetAttrString(packer, "pack");
    PyObject *reset = pack ? PyObject_GetAttrString(packer, "reset") : NULL;
    PyObject *kwnames = Py_BuildValue("(ss)", "ext_hook", "strict_map_key");
    PyObject *calls_key = PyUnicode_InternFromString("calls");
    PyObject *zero = PyLong_FromLong(0), *one = PyLong_FromLong(1);
    PyObject *channels = PyDict_New();
    if (!pack || !reset || !kwnames || !calls_key || !zero || !one || !channels) {
        Py_XDECREF(pack); Py_XDECREF(reset); Py_XDECREF(kwnames); Py_XDECREF(calls_key); Py_XDECREF(zero);
        Py_XDECREF(one); Py_XDECREF(channels);
        return -1;
    }
    Py_XSETREF(x->pack, pack);
    Py_XSETREF(x->reset, reset);
    Py_XSETREF(x->kwnames, kwnames);
    Py_XSETREF(x->calls_key, calls_key);
    Py_XSETREF(x->zero, zero);
    Py_XSETREF(x->one, one);
    Py_XSETREF(x->channels, channels);
    Py_INCREF(kinds); Py_XSETREF(x->kinds, kinds);
    Py_INCREF(methods); Py_XSETREF(x->methods, methods);
    Py_INCREF(stats); Py_XSETREF(x->stats, stats);
    Py_INCREF(unpack); Py_XSETREF(x->unpack, unpack);
    Py_INCREF(ext_hook); Py_XSETREF(x->ext_hook, ext_hook);
    Py_INCREF(execute); Py_XSETREF(x->execute, execute);
    Py_INCREF(finish); Py_XSETREF(x->finish, finish);
    return 0;
}

static int RequestIntake_traverse(RequestIntake *x, visitproc visit, void *arg) {
    Py_VISIT(x->channels); Py_VISIT(x->kinds); Py_VISIT(x->methods); Py_VISIT(x->stats); Py_VISIT(x->unpack);
    Py_VISIT(x->ext_hook); Py_VISIT(x->kwnames); Py_VISIT(x->pack); Py_VISIT(x->reset); Py_VISIT(x->execute);
    Py_VISIT(x->finish); Py_VISIT(x->calls_key); Py_VISIT(x->zero); Py_VISIT(x->one);
    return 0;
}
static int RequestIntake_clear(RequestIntake *x) {
    Py_CLEAR(x->channels); Py_CLEAR(x->kinds); Py_CLEAR(x->methods); Py_CLEAR(x->stats); Py_CLEAR(x->unpack);
    Py_CLEAR(x->ext_hook); Py_CLEAR(x->kwnames); Py_CLEAR(x->pack); Py_CLEAR(x->reset); Py_CLEAR(x->execute);
    Py_CLEAR(x->finish); Py_CLEAR(x->calls_key); Py_CLEAR(x->zero); Py_CLEAR(x->one);
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
   NULL with an exception that is not the call's (e.g. KeyboardInterrupt). The common case stays
   here: unmarshal (msgpack, as marshal.decode_call), look the method up, call it, marshal
   [0, result] with this loop's own Packer. A request that does not unmarshal to a call of a known
   method goes to execute() whole (nothing ran yet); a method that raised, or a result that does
   not marshal or fit, to finish(). */
static PyObject *intake_execute(RequestIntake *x, IntakeEntry *e, PyObject *payload) {
    PyObject *argv[3] = {payload, x->ext_hook, Py_False};
    PyObject *call = PyObject_Vectorcall(x->unpack, argv, 1, x->kwnames);
    if (!call) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
        PyErr_Clear();
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
        if (PyErr_Occurred()) { Py_DECREF(call); return NULL; }
        goto in_python;
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
    PyObject *pair = PyTuple_Pack(2, x->zero, result);
    PyObject *data = pair ? PyObject_CallOneArg(x->pack, pair) : NULL;
    Py_XDECREF(pair);
    if (!data) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) { Py_DECREF(result); return NULL; }
        PyErr_Clear();
        PyObject *r = PyObject_CallNoArgs(x->reset);  /* never leave half a message in the buffer */
        if (!r) { Py_DECREF(result); return NULL; }
        Py_DECREF(r);
    }
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
    argv[0] = payload;
    argv[1] = e->limit;
    return PyObject_Vectorcall(x->execute, argv, 2, NULL);
}
static void RequestIntake_dealloc(RequestIntake *x) {
    PyObject_GC_UnTrack(x);
    RequestIntake_clear(x);
    Py_TYPE(x)->tp_free((PyObject *)x);
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
    Py_INCREF(conn);
    e->conn = conn;
    e->base = (const unsigned char *)(uintptr_t)base;
    e->size = size;
    e->slot = slot;
    e->reply = writer == Py_None ? NULL : (Writer *)writer;
    Py_XINCREF(e->reply);
    e->connection_id = conn_id;
    e->max_payload = max_payload;
    Py_INCREF(limit);
    e->limit = limit;
    e->limit_n = limit_n;
    e->active = 0;
    e->last = e->served = e->replied = 0;
    e->reply_payload = NULL;
    e->reply_kind = 0;
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

/* The lane's state as the protocol takes it back: (served, replied, last, reply frame or None);
   the lane is off afterwards. */
static PyObject *lane_handback(IntakeEntry *e) {
    PyObject *frame = Py_None;
    if (e->reply_payload) {  /* the reply cache, framed as the lane wrote it */
        frame = frame_bytes(e->reply_kind, e->connection_id, e->last, PyBytes_AS_STRING(e->reply_payload),
                            PyBytes_GET_SIZE(e->reply_payload), 0, 1, 0, 0);
        if (!frame) return NULL;
    } else {
        Py_INCREF(frame);
    }
    PyObject *r = Py_BuildValue("(KKKN)", e->served, e->replied, e->last, frame);
    if (!r) return NULL;
    e->active = 0;
    e->served = e->replied = 0;
    Py_CLEAR(e->reply_payload);
    return r;
}

/* lane(segment_id, last): the protocol lends the lane its state (its highest delivered call id).
   False (lane stays off) if the connection has no reply writer. */
static PyObject *RequestIntake_lane(RequestIntake *x, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "lane(segment_id, last)");
        return NULL;
    }
    IntakeEntry *e = intake_entry(x, args[0]);
    if (!e) return NULL;
    unsigned long long last = PyLong_AsUnsignedLongLong(args[1]);
    if (last == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (e->active) {
        PyErr_SetString(PyExc_ValueError, "the lane already holds this connection's state");
        return NULL;
    }
    if (!e->reply) Py_RETURN_FALSE;
    e->active = 1;
    e->last = last;
    e->served = e->replied = 0;
    Py_CLEAR(e->reply_payload);
    Py_RETURN_TRUE;
}

/* take(segment_id) -> the handback (see lane_handback), or None if the lane is off. */
static PyObject *RequestIntake_take(RequestIntake *x, PyObject *seg) {
    IntakeEntry *e = intake_entry(x, seg);
    if (!e) return NULL;
    if (!e->active) Py_RETURN_NONE;
    return lane_handback(e);
}

/* A frame for Python: (connection, fields or None, waited_ns, handback or None, executed or None). */
static PyObject *intake_to_python(RequestIntake *x, IntakeEntry *e, const unsigned char *b, Py_ssize_t n,
                                  uint64_t waited, PyObject *fields, PyObject *executed) {
    if (!fields) {
        fields = b ? decode_frame(b, n, x->kinds) : NULL;
        if (!fields) {
            if (PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_ValueError)) return NULL;
                PyErr_Clear();
            }
            fields = Py_None;
            Py_INCREF(fields);
        }
    } else {
        Py_INCREF(fields);
    }
    PyObject *handback = e->active ? lane_handback(e) : (Py_INCREF(Py_None), Py_None);
    if (!handback) { Py_DECREF(fields); return NULL; }
    return Py_BuildValue("(ONKNO)", e->conn, fields, (unsigned long long)waited, handback,
                         executed ? executed : Py_None);
}

/* One request signal for entry e at offset off: 1 if the lane served it; 0 with *out a new tuple
   for Python; -1 with an exception. */
static int intake_request(RequestIntake *x, IntakeEntry *e, uint64_t off, uint64_t waited, PyObject **out) {
    if (off >= (uint64_t)e->size) return (*out = intake_to_python(x, e, NULL, 0, waited, NULL, NULL)) ? 0 : -1;
    Py_ssize_t start = (Py_ssize_t)off / e->slot * e->slot, n = e->slot;
    if (start + n > e->size) return (*out = intake_to_python(x, e, NULL, 0, waited, NULL, NULL)) ? 0 : -1;
    const unsigned char *b = e->base + start;
    if (!e->active || !e->reply->base) return (*out = intake_to_python(x, e, b, n, waited, NULL, NULL)) ? 0 : -1;
    /* The lane's test, on a private copy: one whole CALL of this connection, acking all before it. */
    uint32_t plen = get32(b + n - 24);
    uint64_t total = get64(b + n - 8);
    if ((Py_ssize_t)plen > n - TRAILER) return (*out = intake_to_python(x, e, b, n, waited, NULL, NULL)) ? 0 : -1;
    PyObject *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)plen + TRAILER_HEAD);
    if (!payload) return -1;
    unsigned char *c = (unsigned char *)PyBytes_AS_STRING(payload);
    const unsigned char *t = c + plen;
    uint64_t call_id;
    if (sum_copy(c, b + n - TRAILER - plen, (Py_ssize_t)plen + TRAILER_HEAD) != total ||
        get16(t + 38) != FRAME_MAGIC || t[37] != 0 || get32(t + 24) != plen || get16(t + 32) != 0 ||
        get16(t + 34) != 1 || t[36] != 1 || get64(t) != e->connection_id ||
        (call_id = get64(t + 8)) != get64(t + 16) || call_id <= e->last) {
        Py_DECREF(payload);
        return (*out = intake_to_python(x, e, b, n, waited, NULL, NULL)) ? 0 : -1;
    }
    unsigned long credit = get32(t + 28);
    if (_PyBytes_Resize(&payload, plen) < 0) return -1;
    PyObject *executed = intake_execute(x, e, payload);
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
        Py_DECREF(payload);
        Py_XDECREF(executed);
        e->last = call_id;
        e->served++;
        Py_CLEAR(e->reply_payload);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "execute must return (bytes, bool)");
        return -1;
    }
    Py_ssize_t dlen = PyBytes_GET_SIZE(data);
    if (dlen > e->max_payload || dlen + TRAILER > e->reply->unit) {
        /* a reply of several frames: the protocol splits it */
        PyObject *fields = Py_BuildValue("(OKKiiKOk)", PyTuple_GET_ITEM(x->kinds, 1), e->connection_id,
                                         (unsigned long long)call_id, 0, 1, (unsigned long long)call_id,
                                         payload, credit);
        Py_DECREF(payload);
        if (!fields) { Py_DECREF(executed); return -1; }
        *out = intake_to_python(x, e, b, n, waited, fields, executed);
        Py_DECREF(fields);
        Py_DECREF(executed);
        return *out ? 0 : -1;
    }
    Py_DECREF(payload);
    e->last = call_id;
    e->served++;
    e->replied++;
    Py_INCREF(data);
    Py_XSETREF(e->reply_payload, data);  /* the reply cache: sent again if the request comes again */
    e->reply_kind = error ? 4 : 3;
    Py_DECREF(executed);
    if (writer_send_frame(e->reply, e->reply_kind, e->connection_id, call_id, 0, PyBytes_AS_STRING(data), dlen) < 0) {
        if (e->reply->base) return -1;
        PyErr_Clear();  /* the method closed the connection (e.g. it stopped the server): lost */
    }
    return 1;
}

/* serve(spin_ns, timeout_s, sleep_ok, learn_ns) -> what Python must see next:
   - (connection, fields or None, waited_ns, handback or None, executed or None): a request frame
     the lane did not serve (fields as frame_decode returns them; None: it failed its checks;
     executed: the lane ran it already, its reply (payload, error) needs several frames);
   - (segment id, offset, waited_ns): any other signal;
   - (None, None, waited_ns): the lane served a request whose wait outlasted learn_ns (the
     adaptive spin learns from it);
   - a WAIT_* int: no signal within timeout_s, which bounds the whole call. */
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
    uintptr_t f = x->fifo;
    uint64_t deadline = now_ns() + (uint64_t)(timeout_s * 1e9);
    for (;;) {
        uint64_t t = now_ns(), waited;
        int r = wait_signal(f, spin_ns, t < deadline ? (double)(deadline - t) * 1e-9 : 0.0, sleep_ok, &waited);
        if (r < 0) return NULL;  /* e.g. KeyboardInterrupt */
        uint64_t seg, off;
        if (r != WAIT_READY || !fifo_take(f, &seg, &off)) return PyLong_FromLong(r == WAIT_READY ? WAIT_TIMEOUT : r);
        PyObject *key = PyLong_FromUnsignedLongLong(seg);
        if (!key) return NULL;
        IntakeEntry *e = (IntakeEntry *)PyDict_GetItemWithError(x->channels, key);
        Py_DECREF(key);
        if (!e) {
            if (PyErr_Occurred()) return NULL;
            return Py_BuildValue("(KKK)", (unsigned long long)seg, (unsigned long long)off, (unsigned long long)waited);
        }
        Py_INCREF(e);  /* the method it runs may drop the connection */
        PyObject *out = NULL;
        int served = intake_request(x, e, off, waited, &out);
        Py_DECREF(e);
        if (served <= 0) return out;
        if (waited > learn_ns) return Py_BuildValue("(OOK)", Py_None, Py_None, (unsigned long long)waited);
        if (now_ns() >= deadline) return PyLong_FromLong(WAIT_TIMEOUT);
    }
}

static PyMethodDef RequestIntake_methods[] = {
    {"add", (PyCFunction)RequestIntake_add, METH_VARARGS,
     "add(segment_id, connection, base, size, slot_size, reply_writer, connection_id, max_payload, limit)"},
    {"remove", (PyCFunction)RequestIntake_remove, METH_O, "remove(segment_id)"},
    {"lane", (PyCFunction)(void (*)(void))RequestIntake_lane, METH_FASTCALL,
     "lane(segment_id, last) -> bool: serve that connection's simple requests natively"},
    {"take", (PyCFunction)RequestIntake_take, METH_O, "take(segment_id) -> (served, replied, last, frame) | None"},
    {"serve", (PyCFunction)(void (*)(void))RequestIntake_serve, METH_FASTCALL,
     "serve(spin_ns, timeout_s, sleep_ok, learn_ns) -> (connection, fields, waited_ns, handback, executed) | "
     "(segment id, offset, waited_ns) | (None, None, waited_ns) | WAIT_*"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RequestIntakeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.RequestIntake",
    .tp_basicsize = sizeof(RequestIntake),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RequestIntake(fifo, kinds, methods, stats, unpack, ext_hook, packer, execute, finish): "
              "the RPC server's serving loop and its native lane",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RequestIntake_init,
    .tp_dealloc = (destructor)RequestIntake_dealloc,
    .tp_traverse = (traverseproc)RequestIntake_traverse,
    .tp_clear = (inquiry)RequestIntake_clear,
    .tp_methods = RequestIntake_methods,
};

static PyMethodDef methods[] = {
    {"addr_of", n_addr_of, METH_O, "address of a buffer's first byte (the buffer must outlive its use)"},
    {"load64", n_load64, METH_O, "acquire-load a u64"},
    {"load32", n_load32, METH_O, "acquire-load a u32"},
    {"store64", n_store64, METH_VARARGS, "release-store a u64"},
    {"store32", n_store32, METH_VARARGS, "release-store a u32"},
    {"cas64", n_cas64, METH_VARARGS, "compare-and-swap a u64; True if swapped"},
    {"cas32", n_cas32, METH_VARARGS, "compare-and-swap a u32; True if swapped"},
    {"fetch_add64", n_fetch_add64, METH_VARARGS, "atomic fetch-add on a u64; returns the old value"},
    {"futex_wait", n_futex_wait, METH_VARARGS, "futex_wait(addr, expected, timeout_s) -> woken"},
    {"futex_wake", n_futex_wake, METH_VARARGS, "futex_wake(addr, n=all) -> number woken"},
    {"fifo_push", n_fifo_push, METH_VARARGS, "push (segment id, offset); PUSH_* result"},
    {"fanout", (PyCFunction)(void (*)(void))n_fanout, METH_FASTCALL, "push one signal to several FIFOs; 0 when all went well"},
    {"fifo_pop", n_fifo_pop, METH_O, "pop (segment id, offset) or None"},
    {"fifo_skip_stalled", n_fifo_skip_stalled, METH_O, "retire a head cell whose producer died"},
    {"fifo_wait", (PyCFunction)(void (*)(void))n_fifo_wait, METH_FASTCALL, "spin-then-sleep until the FIFO has an entry; WAIT_*"},
    {"fifo_wait_pop", (PyCFunction)(void (*)(void))n_fifo_wait_pop, METH_FASTCALL, "wait, then pop: (segment id, offset, waited_ns) or WAIT_*"},
    {"frame_encode", (PyCFunction)(void (*)(void))n_frame_encode, METH_FASTCALL, "encode an RPC frame: payload + trailer"},
    {"frame_decode", (PyCFunction)(void (*)(void))n_frame_decode, METH_FASTCALL, "validate and copy out the frame ending a buffer"},
    {"checksum", n_checksum, METH_O, "64-bit Fletcher checksum of a buffer"},
    {"copy_checksum", n_copy_checksum, METH_VARARGS, "copy src into dst, returning the checksum of src"},
    {"writer_signals_sent", n_writer_counters, METH_NOARGS, "signals pushed by Writer objects in this process"},
    {"writer_signals_reset", n_writer_counters_reset, METH_NOARGS, "zero the Writer counter (after fork)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "ombm._native",
                                       "Atomics, futexes, the signal FIFO and fused copy+checksum.", -1,
                                       methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&WriterType) < 0 || PyType_Ready(&CallLaneType) < 0 || PyType_Ready(&IntakeEntryType) < 0 ||
        PyType_Ready(&RequestIntakeType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(m, "Writer", (PyObject *)&WriterType) < 0) { Py_DECREF(&WriterType); Py_DECREF(m); return NULL; }
    Py_INCREF(&CallLaneType);
    if (PyModule_AddObject(m, "CallLane", (PyObject *)&CallLaneType) < 0) { Py_DECREF(&CallLaneType); Py_DECREF(m); return NULL; }
    Py_INCREF(&RequestIntakeType);
    if (PyModule_AddObject(m, "RequestIntake", (PyObject *)&RequestIntakeType) < 0) {
        Py_DECREF(&RequestIntakeType); Py_DECREF(m); return NULL;
    }
    PyModule_AddIntConstant(m, "LANE_REPLY", LANE_REPLY);
    PyModule_AddIntConstant(m, "LANE_ERROR_REPLY", LANE_ERROR_REPLY);
    PyModule_AddIntConstant(m, "LANE_OTHER", LANE_OTHER);
    PyModule_AddIntConstant(m, "LANE_TIMEOUT", LANE_TIMEOUT);
    PyModule_AddIntConstant(m, "LANE_VALUE", LANE_VALUE);
    PyModule_AddIntConstant(m, "LANE_UNSENT", LANE_UNSENT);
    PyModule_AddIntConstant(m, "LANE_NOT_LENT", LANE_NOT_LENT);
    PyModule_AddIntConstant(m, "PUSH_OK", PUSH_OK);
    PyModule_AddIntConstant(m, "PUSH_WOKE", PUSH_WOKE);
    PyModule_AddIntConstant(m, "PUSH_DOORBELL", PUSH_DOORBELL);
    PyModule_AddIntConstant(m, "PUSH_FULL", PUSH_FULL);
    PyModule_AddIntConstant(m, "WAIT_READY", WAIT_READY);
    PyModule_AddIntConstant(m, "WAIT_TIMEOUT", WAIT_TIMEOUT);
    PyModule_AddIntConstant(m, "WAIT_STALLED", WAIT_STALLED);
    PyModule_AddIntConstant(m, "FIFO_TAIL", FIFO_TAIL);
    PyModule_AddIntConstant(m, "FIFO_HEAD", FIFO_HEAD);
    PyModule_AddIntConstant(m, "FIFO_SLEEP", FIFO_SLEEP);
    PyModule_AddIntConstant(m, "FIFO_CAPACITY", FIFO_MASK);
    PyModule_AddIntConstant(m, "FIFO_CELLS", FIFO_CELLS);
    PyModule_AddIntConstant(m, "FIFO_DROPS", FIFO_DROPS);
    PyModule_AddIntConstant(m, "CELL_SIZE", CELL_SIZE);
    return m;
}
