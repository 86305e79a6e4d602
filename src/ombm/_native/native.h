/*
 * ombm._native: what every part of the native module shares (DESIGN.md §3: the few operations
 * Python cannot express, and the per-message fast paths built on them).
 *
 * One extension, ombm._native, built from the files beside this one, one concept each:
 *   native.h          this: layout constants, atomics on shared memory, futex, address arguments
 *   sync.c            atomics and futexes for Python; the spin-then-sleep wait        (paper §3.1.2)
 *   fifo.h, fifo.c    the signal FIFO ring: its validated mapping (FifoMap), push, take,
 *                     fan-out, pop, retiring a dead producer's cell                  (paper §3.1.2)
 *   crc32c.h, crc32c.c  the checksum: CRC32C fused with a copy (SSE4.2, ARMv8 CRC, table)  (§4)
 *   frame.h, frame.c  THE frame check (bounds + checksum), the checksum for Python, frame encode/decode (§4)
 *   writer.h, writer.c  signal-on-write: Region.write's fast path                   (paper §3.3)
 *   faults.h, faults.c  fault injection in that path: dropped signals, flipped bits (DESIGN.md §4)
 *   lane.h, lane.c    what both RPC lanes share: statuses, typed results, marshalling (paper §4)
 *   call_lane.c       CallLane: the RPC client's no-loss path                         (paper §4)
 *   request_intake.c  RequestIntake: the RPC server's loop and its no-loss path       (paper §4)
 *   mapping.c         map_over, guard: mappings without a descriptor, and no SIGBUS from a peer (issue 11)
 *   net.h, net_engine.c  BridgeEngine: the bridge's native data path (datagrams, replay window) (§3.2.3)
 *   bridge.c          the bridge's delta against its shadow and its spin before it sleeps   (paper §3.2.3)
 *   stream_batch.c    a stream's small messages in batches: a run written, a run taken, per call  (§4)
 *   module.c          creates the module, has each part add its functions and types, adds the constants
 * Hot helpers that several parts call (the ring's push and take, an address argument) are
 * `static inline` in the headers, so the split costs no call.
 *
 * Memory ordering. Every word that another process reads or writes concurrently (the FIFO's
 * positions, cells, sleep word and counters; a segment's directory version) is a C11 atomic,
 * accessed with the ordering it needs, said beside it where it is not obvious: nothing relies on
 * x86's strong ordering, so the module is correct on aarch64 too; the loads, stores and
 * read-modify-writes Python calls (sync.c) are all seq_cst. Message contents (the data a
 * Writer copies, a frame in a slot) are not atomics: a message is published by the signal (the
 * FIFO cell's release), and a reader that raced with an overwrite, which message-oriented
 * consistency allows (paper §3.2), sees it in the frame's checksum.
 *
 * Every offset used here is defined in ombm/_layout.py; the FIFO constants below must match it
 * (_layout.check_native() checks them at import).
 */
#ifndef OMBM_NATIVE_H
#define OMBM_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- FIFO layout (mirrors _layout.FIFO_*) ---- */
#define FIFO_CAPACITY 12  /* u32 capacity (a power of two), written once when the FIFO is made */
#define FIFO_DROPS 40     /* u64 signals dropped because the FIFO was full */
#define FIFO_PEER_CPU 48  /* u32 hint, the producers': the CPU of the last push + 1, 0 unknown (fifo.h) */
#define FIFO_TAIL 64      /* u64 enqueue position, own cache line */
#define FIFO_HEAD 128     /* u64 dequeue position, own cache line */
#define FIFO_STATE 136    /* u32 hint, the receiver's (in its own line): RECEIVER_* | (its CPU + 1) << 8 (sync.c) */
#define FIFO_SLEEP 192    /* u32 futex word: 0 awake, 1 futex sleep, 2 doorbell sleep */
#define FIFO_CELLS 256    /* first cell */
#define CELL_SIZE 32      /* u64 seq, u64 segment id, u64 offset, u64 pad (see fifo.h) */
#define FIFO_VERSION 2    /* 2: a claimed cell's seq names its producer (fifo.h) */

/* the receiver's state in FIFO_STATE's low byte: a hint for its peers and tools, never trusted */
#define RECEIVER_RUNNING 0
#define RECEIVER_SPINNING 1
#define RECEIVER_ASLEEP 2

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
#define WAIT_SLICE 4       /* internal, never returned to Python: the main thread's sleep slice ended
                              (see SIGNAL_SLICE_NS in sync.c): check Python's signals, then wait on */

typedef _Atomic uint64_t au64;
typedef _Atomic uint32_t au32;

static inline au64 *A64(uintptr_t a) { return (au64 *)a; }
static inline au32 *A32(uintptr_t a) { return (au32 *)a; }

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline long futex(au32 *uaddr, int op, uint32_t val, const struct timespec *ts) {
    return syscall(SYS_futex, (uint32_t *)uaddr, op, val, ts, NULL, 0);
}

/* An address argument: a non-null int aligned to `align` bytes; 0, or -1 with ValueError. */
static inline int parse_aligned(PyObject *o, uintptr_t *out, unsigned align) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (v == 0 || (v & (align - 1))) {
        PyErr_Format(PyExc_ValueError, "ombm._native: address must be non-null and %u-byte aligned", align);
        return -1;
    }
    *out = (uintptr_t)v;
    return 0;
}
static inline int parse_addr(PyObject *o, uintptr_t *out) { return parse_aligned(o, out, 8); }
static inline int parse_addr32(PyObject *o, uintptr_t *out) { return parse_aligned(o, out, 4); }

/* The wait's policy arguments (sync.c; the wait itself is declared in fifo.h). */
int parse_wait_policy(PyObject *const *args, Py_ssize_t n, uint64_t *spin_ns, double *timeout_s, int *sleep_ok);

/* The slots of a garbage-collected type that Python makes as Name(...), from the functions
   Name_init, Name_traverse, Name_clear and the table Name_methods (its instances freed by
   native_dealloc). */
#define NATIVE_TYPE(Name)                                                                         \
    .tp_name = "ombm._native." #Name, .tp_basicsize = sizeof(Name),                               \
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, .tp_new = PyType_GenericNew,             \
    .tp_init = (initproc)Name##_init, .tp_dealloc = native_dealloc,                               \
    .tp_traverse = (traverseproc)Name##_traverse, .tp_clear = (inquiry)Name##_clear,              \
    .tp_methods = Name##_methods

/* Free a garbage-collected object: untrack it, clear it with its type's tp_clear, free it. */
void native_dealloc(PyObject *self);

/* Add a part's functions (a table, or NULL) and types (NULL-terminated, or NULL) to the module. */
int native_add(PyObject *module, PyMethodDef *functions, PyTypeObject *const *types);

/* Each part adds its functions and types to the module (module.c adds the constants): 0, or -1
   with an exception. */
int native_add_sync(PyObject *module);
int native_add_fifo(PyObject *module);
int native_add_frame(PyObject *module);
int native_add_writer(PyObject *module);
int native_add_call_lane(PyObject *module);
int native_add_pipe_lane(PyObject *module);
int native_add_request_intake(PyObject *module);
int native_add_mapping(PyObject *module);
int native_add_bridge(PyObject *module);
int native_add_stream_batch(PyObject *module);

#endif
