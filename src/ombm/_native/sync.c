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

#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>

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

/* ---- what a waiter knows: the machine's load, where its peer runs, what its spins achieved

   A spin can win only while the thread that will signal runs on another CPU. So before it spins
   a waiter looks at:
   - the machine's load: the runnable tasks (/proc/loadavg's fourth field: runnable/total, the
     kernel's instantaneous count, this thread included) against the online CPUs, read at most
     every LOAD_REFRESH_NS per process. More runnable tasks than CPUs: someone waits for a CPU,
     maybe the peer, and a spin takes a CPU from it (issue 13: 16 clients spinning against one
     server on 2 CPUs are 16 of the 17 tasks the scheduler shares the CPUs among). Then the waiter spins at most OVERLOAD_SPIN_NS, and only
     while its spins under load win (learnt per thread, below), else it goes straight to the futex;
   - where its peer runs: producers note the CPU of their last push in the FIFO (FIFO_PEER_CPU,
     fifo.h). If that is this thread's CPU, the peer can run only when this thread stops: it yields
     at every check (no polling, no pause), so a ping-pong on one CPU hands the CPU over directly,
     two context switches a round trip;
   - what its spins achieved: under load, OVERLOAD_LOSSES spins in a row that ended without a
     signal stop the spinning; every OVERLOAD_PROBE-th wait probes again, and a win resets it;
   - whether its peer works for it, where the waiter knows its peer (a client lane: its server's
     receiver; the server's intake: the client it last answered): under load, while the peer's
     published state (FIFO_STATE of the peer's FIFO) reads running or spinning on another CPU with
     no queue before this waiter's request, the waiter spins its whole learnt budget, whatever its
     losses (a sleep would only add a wake-up to a reply on its way: a 64 KiB echo's copies take
     longer than OVERLOAD_SPIN_NS), and, while the peer works (reads running, or spinning with a
     signal to take), quietly, as in its first QUIET_SPIN_NS: it polls, with neither pause nor
     sched_yield. (A peer that spins waits for work done elsewhere, maybe on this CPU: a bridge
     whose reply comes from a server sharing this waiter's CPU, 44 -> 150 µs a call when followed
     quietly; such a follower yields every 16 checks.) Under load a yield hands this CPU to another runnable task,
     most often another waiter of the same server, which sends its request and yields in turn: a
     context switch (and an interpreter's cold caches) for every call. With 16 synchronous
     clients of one server on 2 CPUs, without those yields the CPU time per call fell from 9.7
     to 6.4 µs and the aggregate rose from 196 k to 304 k calls/s (medians of one sitting,
     docs/benchmarks.md, *A/B: 16 clients without collapse*). Running on this CPU, it yields at
     every check.
   All of it is a hint: a peer may write anything into the FIFO's hint words; the worst it does
   is make this waiter spin (up to its budget) or sleep at once, never miss a signal. */
#define LOAD_REFRESH_NS 2000000ull
/* 16, not a few: a peer preempted for a while costs one long wait, one loss; only a run of losses
   says spinning cannot win. With 3, a brief burst (both sides once asleep) stopped both sides'
   spins for good on a machine loaded by others, and every message then cost a futex wake-up:
   a pinned cross-CPU 32 B call took 40-71 us instead of 3.0 (issue 13, docs/benchmarks.md). */
#define OVERLOAD_LOSSES 16
#define OVERLOAD_PROBE 32
#define OVERLOAD_SPIN_NS 10000ull  /* the longest spin under load: a few cross-CPU round trips */

static _Atomic int load_aware = 1;         /* 0: none of this (configure(load_aware=False)) */
static _Atomic uint64_t load_seen_ns = 0;  /* when a thread last read the load (0: never) */
static _Atomic long load_runnable = 0;     /* the runnable tasks at that reading (-1: unknown) */
static _Atomic long online_cpus = 0;       /* read once per process (0: not yet) */
static _Thread_local unsigned overload_losses = 0, overload_waits = 0;

/* The runnable tasks now (/proc/loadavg's "R/T" field), or -1 if it cannot be read. */
static long runnable_tasks(void) {
    char buf[128];
    int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    const char *p = buf;
    for (int field = 0; field < 3; field++) {  /* skip the three load averages */
        p = strchr(p, ' ');
        if (!p) return -1;
        p++;
    }
    char *end;
    long r = strtol(p, &end, 10);
    return end != p && *end == '/' ? r : -1;
}

/* Whether more tasks are runnable than the machine has CPUs (at the last reading, refreshed if
   older than LOAD_REFRESH_NS; one thread of the process refreshes it). Unknown reads as not.
   The bridge's spin (net_engine.c) asks it too: 0 when the hints are off (load_aware). */
int machine_overloaded(uint64_t now) {
    if (!atomic_load_explicit(&load_aware, memory_order_relaxed)) return 0;
    uint64_t seen = atomic_load_explicit(&load_seen_ns, memory_order_relaxed);
    if ((seen && now - seen < LOAD_REFRESH_NS) ||
        !atomic_compare_exchange_strong_explicit(&load_seen_ns, &seen, now, memory_order_relaxed,
                                                 memory_order_relaxed))
        return atomic_load_explicit(&load_runnable, memory_order_relaxed) >
               atomic_load_explicit(&online_cpus, memory_order_relaxed);
    long cpus = atomic_load_explicit(&online_cpus, memory_order_relaxed);
    if (!cpus) {
        cpus = sysconf(_SC_NPROCESSORS_ONLN);
        if (cpus < 1) cpus = 1;
        atomic_store_explicit(&online_cpus, cpus, memory_order_relaxed);
    }
    long runnable = runnable_tasks();
    atomic_store_explicit(&load_runnable, runnable, memory_order_relaxed);
    return runnable > cpus;
}

/* Whether the peer a waiter waits for (the thread that will signal it) runs on another CPU than
   `cpu`, with no queue before this waiter's request: its receiver's published state (FIFO_STATE
   of the peer's own FIFO, fifo_publish_state in fifo.h) reads running or spinning, with a CPU that is not
   this one, and its FIFO holds at most one signal (a server with other clients' requests pending
   answers after them: spinning through their work steals a CPU from those clients). Hints the
   peer may forge. */
static inline int peer_runs_elsewhere(const FifoMap *peer, int cpu) {
    uint32_t s = atomic_load_explicit(A32(peer->base + FIFO_STATE), memory_order_relaxed);
    uint32_t state = s & 0xffu, at = s >> 8;
    if ((state != RECEIVER_RUNNING && state != RECEIVER_SPINNING) || !at || cpu < 0 || at == (uint32_t)cpu + 1)
        return 0;
    uint64_t head = atomic_load_explicit(A64(peer->base + FIFO_HEAD), memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(A64(peer->base + FIFO_TAIL), memory_order_relaxed);
    return tail - head <= 1 || head - tail <= 1;  /* (the head may pass the tail by one: fifo.h) */
}

/* Whether that peer works: it reads running, or spinning with a signal in its FIFO that it is
   about to take (a follower polls quietly only then: a peer that spins on an empty FIFO waits for
   work done elsewhere, perhaps on this waiter's CPU, which a quiet poll would keep from running).
   Hints the peer may forge. */
static inline int peer_working(const FifoMap *peer) {
    uint32_t state = atomic_load_explicit(A32(peer->base + FIFO_STATE), memory_order_relaxed) & 0xffu;
    if (state == RECEIVER_RUNNING) return 1;
    if (state != RECEIVER_SPINNING) return 0;
    /* spinning with a signal in its FIFO (this waiter's request, peer_runs_elsewhere): about to work */
    uint64_t head = atomic_load_explicit(A64(peer->base + FIFO_HEAD), memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(A64(peer->base + FIFO_TAIL), memory_order_relaxed);
    return (int64_t)(tail - head) > 0;
}

/* Whether that peer reads running (not waiting) on `cpu`, this thread's CPU. */
static inline int peer_runs_here(const FifoMap *peer, int cpu) {
    uint32_t s = atomic_load_explicit(A32(peer->base + FIFO_STATE), memory_order_relaxed);
    return cpu >= 0 && (s & 0xffu) == RECEIVER_RUNNING && s >> 8 == (uint32_t)cpu + 1;
}

/* Whether the thread this waiter waits for shares `cpu`, this thread's CPU, so that it runs only
   when this thread stops: its last signal came from this CPU (FIFO_PEER_CPU of the waiter's FIFO
   `m`), or `peer`, the peer's own FIFO if known, reads running here. Hints a peer may forge: the
   worst is a yield where a poll would do. */
static inline int peer_shares_cpu(const FifoMap *m, const FifoMap *peer, int cpu) {
    uint32_t last = atomic_load_explicit(A32(m->base + FIFO_PEER_CPU), memory_order_relaxed);
    return atomic_load_explicit(&load_aware, memory_order_relaxed) && cpu >= 0 &&
           (last == (uint32_t)cpu + 1 || (peer && peer_runs_here(peer, cpu)));
}

/* Whether this thread's last hand-over (below, hand_over) found its CPU crowded: its yield took
   longer than HANDOVER_CROWDED_NS, so a third task ran there (or the peer's turn is that long). Then
   a wait whose peer shares the CPU neither hands over nor yields in its spin: it sleeps on the futex
   at once and is woken by the peer's push, as a pipe's reader is, which the scheduler runs before
   the third task (a yield gives that task its turn: with a CPU-bound task beside a one-CPU
   ping-pong, round trips took 28-35 µs instead of 2.4). Every HANDOVER_PROBE-th wait hands over
   again, and learns anew. */
#define HANDOVER_CROWDED_NS 50000ull
#define HANDOVER_PROBE 8
static _Thread_local unsigned handover_crowded = 0, handover_waits = 0;

/* set_load_aware(flag): whether waits use the hints above (ombm.configure(load_aware=...)). */
static PyObject *n_set_load_aware(PyObject *Py_UNUSED(self), PyObject *arg) {
    int flag = PyObject_IsTrue(arg);
    if (flag < 0) return NULL;
    atomic_store_explicit(&load_aware, flag, memory_order_relaxed);
    Py_RETURN_NONE;
}


/* How long a spin only polls (reading the clock between checks) before it pauses and yields,
   unless the peer shares this CPU. A sched_yield is a system call (a few hundred ns here) during
   which a signal that arrives goes unseen, and a peer on another CPU usually answers within this.
   No pause either: under KVM a run of pauses longer than the pause-loop-exit window (about 4,096
   cycles) makes the host deschedule this vCPU. */
#define QUIET_SPIN_NS 3000ull

/* Python runs signal handlers in the main thread only, and a POSIX signal interrupts a futex sleep
   only if it comes during the system call: one that came while the thread spun, or just before it
   called FUTEX_WAIT, would wait for the sleep's end (a whole timeout) to be handled, so SIGTERM or
   Ctrl-C seemed ignored. The main thread therefore sleeps in slices of at most SIGNAL_SLICE_NS and
   lets its caller check Python's signals between them (WAIT_SLICE); 20 wake-ups a second while idle.
   Other threads sleep whole. (On Linux the main thread's id is the process id.) */
#define SIGNAL_SLICE_NS 50000000ull
static int in_main_thread(void) { return (pid_t)syscall(SYS_gettid) == getpid(); }

/* Spin for spin_ns (as the hints above allow: poll for QUIET_SPIN_NS, then pause and sched_yield
   every 16 checks, unless it follows a working peer, and then polls quietly; with the peer on
   this CPU, yield at every check), then announce sleep,
   re-check, and sleep on the futex until timeout. `peer`, if not NULL, is the FIFO of the thread
   this waiter waits for (a client lane: its server's receiver), whose published state tells
   whether the peer runs (the peer's rule in the comment above). Called without the GIL.
   Returns WAIT_*; *waited_ns is the time spent. */
/* Announce a futex sleep: the state SLEEP_FUTEX (whatever it was: a SLEEP_WOKEN left by a wake this
   thread took already) and the next wake generation, so that a producer's late SLEEP_WOKEN mark,
   whose CAS expects the word of its own bump, cannot land on this sleep (fifo_wake). A CAS, so no
   producer's bump is lost; bounded (a peer may rewrite the word all the time): then a plain
   fetch-or, as a sleep word that a peer rewrites costs at most a sleep until the timeout anyway.
   Returns the word announced, the value FUTEX_WAIT expects. */
static uint32_t announce_sleep(au32 *sleep) {
    uint32_t word = atomic_load_explicit(sleep, memory_order_relaxed);
    for (unsigned tries = 0; tries < FIFO_RETRIES; tries++) {
        uint32_t want = ((word & ~SLEEP_STATE) + SLEEP_GENERATION) | SLEEP_FUTEX;
        if (atomic_compare_exchange_weak_explicit(sleep, &word, want, memory_order_seq_cst, memory_order_relaxed))
            return want;
    }
    return atomic_fetch_or_explicit(sleep, SLEEP_FUTEX, memory_order_seq_cst) | SLEEP_FUTEX;
}

int spin_then_sleep_for(const FifoMap *m, const FifoMap *peer, uint64_t spin_ns, double timeout_s, int sleep_ok,
                        uint64_t *waited_ns) {
    int result = WAIT_TIMEOUT;
    uint64_t start = now_ns();
    uint64_t deadline = start + (uint64_t)(timeout_s * 1e9);
    int cpu = sched_getcpu();
    int aware = atomic_load_explicit(&load_aware, memory_order_relaxed);
    int shared = peer_shares_cpu(m, peer, cpu);  /* the peer runs only when this thread yields */
    int loaded = aware && sleep_ok && spin_ns && machine_overloaded(start);
    /* following: under load, the peer runs on another CPU (working for this waiter, and able to
       run): spin the whole learnt budget while that lasts, whatever the losses */
    uint64_t budget = spin_ns;  /* the learnt budget: a follower's, never more */
    int follow = loaded && peer && !shared && peer_runs_elsewhere(peer, cpu);
    if (loaded && !follow) {  /* spin only as long as spins under load win (learnt), probing now and then */
        if (overload_losses >= OVERLOAD_LOSSES && ++overload_waits % OVERLOAD_PROBE) spin_ns = 0;
        else if (spin_ns > OVERLOAD_SPIN_NS) spin_ns = OVERLOAD_SPIN_NS;
    }
    if (shared && handover_crowded) spin_ns = 0;  /* a third task shares the CPU: sleep (hand_over) */
    uint64_t spin_end = start + spin_ns;
    if (spin_end > deadline || !sleep_ok) spin_end = deadline;
    if (spin_end > start) {
        fifo_publish_state(m, RECEIVER_SPINNING, cpu);
        unsigned iter = 0, every = shared ? 1 : 16;
        int quiet = follow && peer_working(peer);  /* polls without pause or yield (see above) */
        if (!shared) {  /* the quiet spin: no pause either (see QUIET_SPIN_NS) */
            uint64_t quiet_end = start + QUIET_SPIN_NS < spin_end ? start + QUIET_SPIN_NS : spin_end;
            while (now_ns() < quiet_end)
                if (fifo_ready(m)) { result = WAIT_READY; goto done; }
        }
        for (;;) {
            if (fifo_ready(m)) { result = WAIT_READY; goto done; }
            if (++iter % every == 0) {
                uint64_t t = now_ns();
                int elsewhere = loaded && peer && !shared && peer_runs_elsewhere(peer, cpu);
                if (follow && !elsewhere) {  /* no longer: today's rule */
                    follow = 0;
                    if (spin_end > start + OVERLOAD_SPIN_NS) spin_end = start + OVERLOAD_SPIN_NS;
                } else if (!follow && elsewhere) {  /* it woke up meanwhile */
                    follow = 1;
                    spin_end = start + budget < deadline ? start + budget : deadline;
                }
                if (t >= spin_end) break;
                quiet = follow && peer_working(peer);
                if (!quiet) sched_yield();
            } else if (!quiet) {
                cpu_relax();
            }
        }
    }
    if (loaded && spin_ns) overload_losses++;  /* a spin under load that lost */
    au32 *sleep = A32(m->base + FIFO_SLEEP);
    uint64_t unsettled_since = 0;  /* when the FIFO was first seen unsettled in this wait, 0: not */
    int slices = sleep_ok && in_main_thread();
    if (sleep_ok) fifo_publish_state(m, RECEIVER_ASLEEP, cpu);
    while (sleep_ok) {
        uint64_t t = now_ns();
        if (t >= deadline) break;
        /* seq_cst: Drepper's handshake with the push (see fifo_push): announce, then re-check */
        uint32_t announced = announce_sleep(sleep);
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
    if (0) {
done:  /* a signal came while spinning */
        if (loaded) overload_losses = 0;
    }
    fifo_publish_state(m, RECEIVER_RUNNING, sched_getcpu());
    *waited_ns = now_ns() - start;
    return result;
}

int spin_then_sleep(const FifoMap *m, uint64_t spin_ns, double timeout_s, int sleep_ok, uint64_t *waited_ns) {
    return spin_then_sleep_for(m, NULL, spin_ns, timeout_s, sleep_ok, waited_ns);
}

/* ---- the hand-over on one CPU (issue 13, item 3)

   When this thread is pinned to its CPU (pinned_to_one_cpu) and its last signal came from this
   CPU (FIFO_PEER_CPU of its own FIFO, a line it reads anyway: asking the peer's published state
   too cost a cache line taken from the peer at every wait, a cross-CPU 32 B call 5-14 % slower),
   a wait that may spin first hands the CPU over:
   one sched_yield, which runs the peer at once (it is runnable: it yields, or has work), and the
   wait ends there if the peer's signal came meanwhile, two context switches a round trip as with a
   pipe, and one system call a side where a pipe makes two. In a process whose only Python thread
   is this one, that yield keeps the GIL: no other thread can want it (a Python thread is started
   by a thread that holds the GIL; one that a C library attaches meanwhile waits one yield, as it
   would wait out a switch interval), and releasing and retaking it right after a context switch,
   with the spin's set-up, cost about 0.15 µs a side, a sixth of such a round trip (docs/design.md,
   *One CPU*); with other threads, the yield releases the GIL. If the signal has not come, the wait
   goes on as below, the GIL released. While a third task crowds the CPU (handover_crowded, above)
   it sleeps on the futex instead, but for a probe every HANDOVER_PROBE-th wait. */
static int alone_in_process(void) {
    PyInterpreterState *interp = PyInterpreterState_Head();
    if (!interp || PyInterpreterState_Next(interp)) return 0;
    PyThreadState *head = PyInterpreterState_ThreadHead(interp);
    return head && !PyThreadState_Next(head);
}

/* Whether this thread may run on one CPU only (its affinity, which a cpuset also narrows, names
   one), read again after PINNED_REFRESH_NS. Only then is "the peer shares this CPU" a fact rather
   than a passing moment: an unpinned thread's peer seen here runs elsewhere the next instant, and
   with many processes on few CPUs (16 clients of one server on 2 CPUs, each a moment on the
   server's CPU) a yield there hands the CPU to a third task: measured, the 16-client aggregate fell
   from 223 k to 137 k calls/s with the hand-over open to unpinned threads (docs/benchmarks.md). */
#define PINNED_REFRESH_NS 100000000ull
static _Thread_local int pinned_one = 0;
static _Thread_local uint64_t pinned_seen_ns = 0;
static int pinned_to_one_cpu(uint64_t now) {
    if (!pinned_seen_ns || now - pinned_seen_ns >= PINNED_REFRESH_NS) {
        cpu_set_t set;
        pinned_one = sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) == 1;
        pinned_seen_ns = now;
    }
    return pinned_one;
}

/* The hand-over above, called with the GIL: whether the signal came (*waited_ns then the time it
   took). Only for a thread pinned to its CPU (pinned_to_one_cpu). With other threads in the
   process it releases the GIL around the yield, and still skips the spin's set-up. */
static int hand_over(const FifoMap *m, uint64_t *waited_ns) {
    uint64_t start = now_ns();
    if (!pinned_to_one_cpu(start) || !peer_shares_cpu(m, NULL, sched_getcpu())) return 0;
    if (handover_crowded && ++handover_waits % HANDOVER_PROBE) return 0;  /* the futex, as a pipe would */
    int ready;
    if (alone_in_process()) {
        sched_yield();
        ready = fifo_ready(m);
    } else {
        Py_BEGIN_ALLOW_THREADS
        sched_yield();
        ready = fifo_ready(m);
        Py_END_ALLOW_THREADS
    }
    uint64_t took = now_ns() - start;
    handover_crowded = took > HANDOVER_CROWDED_NS;
    if (!ready) return 0;
    *waited_ns = took;
    return 1;
}

/* Wait (GIL released) until FIFO f has an entry or timeout_s passed: WAIT_READY, WAIT_TIMEOUT or
   WAIT_STALLED, with *waited_ns the time spent; -1 with an exception if a POSIX signal's Python
   handler raised (e.g. KeyboardInterrupt). A signal whose handler returns resumes the wait.
   `peer`: as spin_then_sleep_for's (NULL: none known); the caller keeps it alive. With the peer on
   this CPU, the wait begins with the hand-over above. */
int wait_signal_for(const FifoMap *m, const FifoMap *peer, uint64_t spin_ns, double timeout_s, int sleep_ok,
                    uint64_t *waited_ns) {
    *waited_ns = 0;
    int first = (spin_ns || !sleep_ok) && timeout_s > 0;  /* the hand-over: once, if the wait may spin */
    for (;;) {
        /* also after a slice or an interruption: a signal that came meanwhile (or that a POSIX
           signal's handler sent, in PyErr_CheckSignals) is ready, never a timeout */
        if (fifo_ready(m)) return WAIT_READY;
        if (first && hand_over(m, waited_ns)) return WAIT_READY;
        first = 0;
        uint64_t w = 0;
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = spin_then_sleep_for(m, peer, spin_ns, timeout_s, sleep_ok, &w);
        Py_END_ALLOW_THREADS
        *waited_ns += w;
        if (r != WAIT_INTERRUPTED && r != WAIT_SLICE) return r;
        if (PyErr_CheckSignals() < 0) return -1;
        timeout_s -= (double)w * 1e-9;
        spin_ns = 0;  /* it spun already: straight back to sleep */
        if (timeout_s <= 0) return fifo_ready(m) ? WAIT_READY : WAIT_TIMEOUT;
    }
}

int wait_signal(const FifoMap *m, uint64_t spin_ns, double timeout_s, int sleep_ok, uint64_t *waited_ns) {
    return wait_signal_for(m, NULL, spin_ns, timeout_s, sleep_ok, waited_ns);
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
    {"set_load_aware", n_set_load_aware, METH_O, "set_load_aware(flag): whether waits know the load and the peer's CPU"},
    {NULL, NULL, 0, NULL},
};

int native_add_sync(PyObject *module) { return native_add(module, sync_functions, NULL); }
