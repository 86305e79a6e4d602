/*
 * The signal FIFO ring's hot operations (paper §3.1.2), inline for every part that pushes or
 * takes: a bounded multi-producer ring after D. Vyukov, drop when full, and U. Drepper's wake
 * protocol ("Futexes Are Tricky": the receiver announces sleep, re-checks, waits; a sender wakes
 * only a receiver that announced it sleeps, and only the receiver clears its announcement).
 * fifo.c gives them to Python.
 *
 * The FIFO is shared memory that every sender can write: hostile input (issue 11). Its geometry
 * comes from our own side, once: a FifoMap, made per mapping after validation, holds the base
 * address, the mask (capacity - 1) and the mapping's length, and every index computed from a
 * shared word is masked with that private mask, so no value in the file moves an access outside
 * the mapping (Agrona's "capacity from your own side"). Every loop is bounded (FIFO_RETRIES): a
 * word that is neither what the protocol allows reads as full (a push drops it, counted in
 * fifo_corrupt and the FIFO's drops) or corrupt (a pop repairs the cell, counted), and never spins.
 *
 * A cell is four u64 words: seq, segment id, offset, pad (unused). For position pos (cell
 * pos & mask) its seq is
 *   pos          free for pos;
 *   CLAIM | who  claimed by the process `who` (CLAIM_*: pid and start time), not yet published;
 *   pos + 1      published: holds the entry of pos;
 *   pos + cap    taken: free for the next lap.
 * A producer claims a cell by a CAS of its seq from pos to its claim word, writes the entry,
 * publishes with a CAS from its claim word to pos + 1, then moves the tail past it (any producer
 * that finds a claimed, published or taken cell at the tail helps it on; so the head is at most
 * one past the tail). So a claimed-but-unpublished
 * cell names its producer: the receiver retires it (fifo_skip_stalled) only once that process is
 * dead, never on a timer, and a producer that was merely descheduled still owns its cell (its late
 * write cannot land in a later entry). Positions stay below 2^63 (centuries at any rate), so a
 * claim word (top bit set) is never a position.
 */
#ifndef OMBM_FIFO_H
#define OMBM_FIFO_H

#include "faults.h"
#include "native.h"

#include <sched.h>

/* A validated mapping of one FIFO: its geometry, private to this process. Holds a buffer export
   of the mapping (the mmap), so the memory stays mapped while any user (a Writer's route, a lane)
   holds the FifoMap. */
typedef struct {
    PyObject_HEAD
    uintptr_t base;           /* the mapping's first byte */
    uint64_t mask;            /* capacity - 1, from the capacity validated at open */
    Py_ssize_t size;          /* the mapping's length: FIFO_CELLS + capacity * CELL_SIZE <= size */
    Py_buffer view;           /* the export that keeps the mapping alive (view.obj NULL: none) */
} FifoMap;

extern PyTypeObject FifoMapType;

#define CLAIM ((uint64_t)1 << 63)       /* a seq word with this bit is a claim word */
#define CLAIM_PID_SHIFT 41              /* pid (22 bits: pid_max <= 2^22) above start time's low 41 bits */
#define CLAIM_START_MASK (((uint64_t)1 << CLAIM_PID_SHIFT) - 1)
#define FIFO_RETRIES 256                /* the bound of every loop on shared words */

/* This process's claim word (0 until fifo_claim_word() computes it; reset in a forked child). */
extern uint64_t fifo_me;
/* Compute this process's claim word from /proc/self/stat (once per process). */
uint64_t fifo_claim_word(void);
/* Cells found corrupt by this process (pushes dropped, cells repaired): ombm.stats()'s signals_corrupt. */
extern _Atomic unsigned long long fifo_corrupt;
/* The rare paths, out of line (fifo.c): a push that met a corrupt word (drops and counts:
   PUSH_FULL); the head cell of a pop that holds a word the protocol never writes (repairs and
   counts: 0). */
int fifo_push_corrupt(const FifoMap *m);
int fifo_repair(const FifoMap *m, uint64_t pos, uint64_t seq);
/* Set bit `bit` of the Python int *far (made on first use): 0, or -1 with an exception. */
int fifo_far_bit(PyObject **far, Py_ssize_t bit);

static inline au64 *fifo_cell(const FifoMap *m, uint64_t pos) {
    return A64(m->base + FIFO_CELLS + (uintptr_t)((pos & m->mask) * CELL_SIZE));
}

/* Drepper's wake check, after a publish: PUSH_OK, or PUSH_WOKE (a futex wake issued), or
   PUSH_DOORBELL (the receiver sleeps in an event loop: ring it). The sleep word's low two bits are
   the receiver's state (SLEEP_STATE): SLEEP_AWAKE 0, SLEEP_FUTEX 1 (asleep on the futex),
   SLEEP_DOORBELL 2 (asleep in an event loop), SLEEP_WOKEN 3 (asleep on the futex, and a wake has
   been issued: on its way). Above them a wake generation. A producer that finds SLEEP_FUTEX bumps
   the generation before FUTEX_WAKE, so a receiver that announced sleep and is about to FUTEX_WAIT on
   the word it announced finds it changed and looks again (the wake of a producer that came first is
   not lost); after its FUTEX_WAKE it marks the word SLEEP_WOKEN by a CAS from the exact word it
   bumped. A producer that finds SLEEP_WOKEN skips the system call (issue 13: 146 k FUTEX_WAKEs for
   154 k pipelined calls, most of them made while the receiver was already waking up).
   The mark is taken only after the system call, so a producer killed anywhere leaves the word at
   SLEEP_FUTEX (every later push wakes the receiver, as before) or marked for a wake that was made:
   it strands no sleeper. The receiver bumps the generation when it announces a sleep (sync.c), so a
   late mark (its CAS expects the word of the producer's own bump) can never land on a later sleep.
   Only the receiver clears its state. seq_cst: the load is the producer's half of the handshake
   (see fifo_push). */
#define SLEEP_STATE 3u
#define SLEEP_FUTEX 1u
#define SLEEP_WOKEN 3u
#define SLEEP_GENERATION 4u
static inline int fifo_wake(au32 *sleep) {
    uint32_t word = atomic_load_explicit(sleep, memory_order_seq_cst);
    uint32_t state = word & SLEEP_STATE;
    if (state == SLEEP_FUTEX) {
        uint32_t bumped = atomic_fetch_add_explicit(sleep, SLEEP_GENERATION, memory_order_seq_cst) + SLEEP_GENERATION;
        futex(sleep, FUTEX_WAKE, INT_MAX, NULL);
        if ((bumped & SLEEP_STATE) == SLEEP_FUTEX)  /* (a receiver's clear or announce meanwhile: no mark) */
            atomic_compare_exchange_strong_explicit(sleep, &bumped, bumped | SLEEP_WOKEN, memory_order_seq_cst,
                                                    memory_order_relaxed);
        return PUSH_WOKE;
    }
    return state == 2 ? PUSH_DOORBELL : PUSH_OK;  /* awake, or SLEEP_WOKEN: a wake is on its way */
}

/* Tell the receiver which CPU its last signal came from (FIFO_PEER_CPU: CPU + 1): its wait yields
   the CPU instead of polling while that is its own CPU (sync.c). A hint: stored only when it
   changed (sched_getcpu reads the rseq area: no system call), relaxed, never read by a producer. */
static inline void fifo_note_cpu(au32 *peer_cpu) {
    int cpu = sched_getcpu();
    uint32_t v = cpu < 0 ? 0 : (uint32_t)cpu + 1;
    if (atomic_load_explicit(peer_cpu, memory_order_relaxed) != v)
        atomic_store_explicit(peer_cpu, v, memory_order_relaxed);
}

/* Publish this receiver's state (RECEIVER_*) and CPU in FIFO_STATE: a hint for the waits that
   follow their peer (sync.c), relaxed. The receiver's own waits and the bridge's loop write it. */
static inline void fifo_publish_state(const FifoMap *m, uint32_t state, int cpu) {
    atomic_store_explicit(A32(m->base + FIFO_STATE), state | (cpu < 0 ? 0u : (uint32_t)(cpu + 1) << 8),
                          memory_order_relaxed);
}

/* Push (segment id, offset): claim, publish, then Drepper's wake check. Never blocks. PUSH_*. */
static inline int fifo_push(const FifoMap *m, uint64_t seg, uint64_t off) {
    uintptr_t f = m->base;
    uint64_t me = fifo_me ? fifo_me : fifo_claim_word();
    au64 *tail = A64(f + FIFO_TAIL);
    /* relaxed: the position is only a guess until the claim below */
    uint64_t pos = atomic_load_explicit(tail, memory_order_relaxed);
    au64 *cell;
    for (unsigned tries = 0;; tries++) {
        if (tries == FIFO_RETRIES) return fifo_push_corrupt(m);
        cell = fifo_cell(m, pos);
        /* acquire: pairs with the consumer's release in fifo_take, so its reads of the cell's
           previous entry happen before the writes below */
        uint64_t seq = atomic_load_explicit(&cell[0], memory_order_acquire);
        if (seq == pos) {
            /* claim. seq_cst: the claim happens before the tail moves past it (any order that
               makes a reader of the tail see the claim would do) */
            if (atomic_compare_exchange_strong_explicit(&cell[0], &seq, me, memory_order_seq_cst,
                                                        memory_order_relaxed))
                break;
            continue;  /* another producer claimed it: look again */
        }
        if (seq == pos + 1 || seq == pos + m->mask + 1 || (seq & CLAIM)) {
            /* claimed, published or even taken at the tail: its producer has not moved the tail
               yet (help it), unless a claim of the previous lap was never published and the ring
               is full */
            if ((seq & CLAIM) &&
                pos - atomic_load_explicit(A64(f + FIFO_HEAD), memory_order_acquire) > m->mask) {
                atomic_fetch_add_explicit(A64(f + FIFO_DROPS), 1, memory_order_relaxed);  /* a counter */
                return PUSH_FULL;
            }
            uint64_t expect = pos;
            atomic_compare_exchange_strong_explicit(tail, &expect, pos + 1, memory_order_seq_cst,
                                                    memory_order_relaxed);
            pos = expect == pos ? pos + 1 : expect;
            continue;
        }
        if ((int64_t)(seq - pos) < 0) {
            /* the previous lap's entry not taken yet: full (paper: loss when full); any other
               value behind is corrupt */
            if (seq != pos - m->mask) return fifo_push_corrupt(m);
            atomic_fetch_add_explicit(A64(f + FIFO_DROPS), 1, memory_order_relaxed);
            return PUSH_FULL;
        }
        pos = atomic_load_explicit(tail, memory_order_relaxed);  /* ahead: the tail moved on */
    }
    /* relaxed: published by the seq CAS below */
    atomic_store_explicit(&cell[1], seg, memory_order_relaxed);
    atomic_store_explicit(&cell[2], off, memory_order_relaxed);
    /* Publish with a CAS from our claim word: only a peer that rewrote the cell makes it fail
       (the receiver retires a claim only once its process is dead). seq_cst, not only release:
       with the seq_cst load of the sleep word below it is one half of Drepper's handshake (the
       receiver stores its sleep word, then loads seq, both seq_cst): of a push and a receiver
       going to sleep, at least one sees the other. */
    uint64_t expect = me;
    int published = atomic_compare_exchange_strong_explicit(&cell[0], &expect, pos + 1, memory_order_seq_cst,
                                                            memory_order_relaxed);
    /* Move the tail on, unless a helper did: after the publish, so that between claim and publish
       the cell's line is touched by nothing else (a receiver polling it would take the line away
       mid-push). So the head may pass the tail by one, for a moment. */
    expect = pos;
    atomic_compare_exchange_strong_explicit(tail, &expect, pos + 1, memory_order_seq_cst, memory_order_relaxed);
    if (!published) return fifo_push_corrupt(m);
    fifo_note_cpu(A32(f + FIFO_PEER_CPU));
    return fifo_wake(A32(f + FIFO_SLEEP));
}

/* Whether the head cell is published. seq_cst: the receiver's half of Drepper's handshake (see
   fifo_push); the head is the receiver's own position, relaxed. */
static inline int fifo_ready(const FifoMap *m) {
    uint64_t pos = atomic_load_explicit(A64(m->base + FIFO_HEAD), memory_order_relaxed);
    return atomic_load_explicit(fifo_cell(m, pos), memory_order_seq_cst) == pos + 1;
}

/* Of a FIFO whose head is not ready: whether it is anything but empty and settled (its head cell
   claimed and not yet published, or words a peer wrote), so the waiter should poll and let
   fifo_skip_stalled look. */
static inline int fifo_unsettled(const FifoMap *m) {
    uint64_t pos = atomic_load_explicit(A64(m->base + FIFO_HEAD), memory_order_acquire);
    uint64_t t = atomic_load_explicit(A64(m->base + FIFO_TAIL), memory_order_acquire);
    return (t != pos && t + 1 != pos) || atomic_load_explicit(fifo_cell(m, pos), memory_order_acquire) != pos;
}

/* Take the head entry: 1 and (seg, off), or 0 if there is none (or not yet published). */
static inline int fifo_take(const FifoMap *m, uint64_t *seg, uint64_t *off) {
    au64 *head = A64(m->base + FIFO_HEAD);
    uint64_t pos = atomic_load_explicit(head, memory_order_relaxed);
    for (unsigned tries = 0; tries < FIFO_RETRIES; tries++) {
        au64 *cell = fifo_cell(m, pos);
        /* acquire: pairs with the producer's publish, so its segment id and offset are visible */
        uint64_t seq = atomic_load_explicit(&cell[0], memory_order_acquire);
        if (seq == pos + 1) {
            if (atomic_compare_exchange_weak_explicit(head, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed)) {
                *seg = atomic_load_explicit(&cell[1], memory_order_relaxed);
                *off = atomic_load_explicit(&cell[2], memory_order_relaxed);
                /* release: the reads above happen before a producer of the next lap writes */
                atomic_store_explicit(&cell[0], pos + m->mask + 1, memory_order_release);
                return 1;
            }
            continue;
        }
        if (seq == pos || (seq & CLAIM)) return 0;  /* empty, or claimed and not yet published */
        uint64_t now = atomic_load_explicit(head, memory_order_relaxed);
        if (now == pos) return fifo_repair(m, pos, seq);
        pos = now;  /* another consumer took it */
    }
    return 0;
}

/* Push one signal into every FIFO of the tuple `fifos` (FifoMaps): *result 0 in the common case;
   else bits 0-14 of *result count drops (saturating), bit 15 says a futex wake was issued, bit
   16+i that target i sleeps in an event loop and needs its doorbell rung. For i >= 48 that bit
   goes into *far (a Python int, new reference; NULL when there is none): every sleeper is told,
   however many. With `faulty` (the Writer's path while fault injection drops signals, faults.h)
   each push is first drawn for a drop, which skips it: such drops are not in *result (that is a
   full FIFO's, which the sender reports and reclaims) but returned. Returns the signals fault
   injection dropped, or -1 with an exception for an item that is not a FifoMap. */
static inline int fifo_fanout(PyObject *fifos, uint64_t seg, uint64_t off, int faulty, unsigned long long *result,
                              PyObject **far) {
    Py_ssize_t n = PyTuple_GET_SIZE(fifos);
    unsigned long long bits = 0, drops = 0;
    int lost = 0;
    *far = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PyTuple_GET_ITEM(fifos, i);
        if (!Py_IS_TYPE(o, &FifoMapType)) {
            Py_XDECREF(*far);
            *far = NULL;
            PyErr_SetString(PyExc_TypeError, "fanout: the FIFOs must be FifoMap objects");
            return -1;
        }
        if (faulty && fault_drop()) {
            lost++;
            continue;
        }
        int r = fifo_push((FifoMap *)o, seg, off);
        if (r == PUSH_FULL) drops++;
        else if (r == PUSH_WOKE) bits |= 1ull << 15;
        else if (r == PUSH_DOORBELL) {
            if (i < 48) bits |= 1ull << (16 + i);
            else if (fifo_far_bit(far, 16 + i) < 0) return -1;
        }
    }
    *result = bits | (drops > 0x7fff ? 0x7fff : drops);
    return lost;
}

/* The wait (sync.c). spin_then_sleep runs without the GIL; wait_signal holds it and releases it
   while it waits. See sync.c. */
int spin_then_sleep(const FifoMap *m, uint64_t spin_ns, double timeout_s, int sleep_ok, uint64_t *waited_ns);
int wait_signal(const FifoMap *m, uint64_t spin_ns, double timeout_s, int sleep_ok, uint64_t *waited_ns);
/* The same, knowing the peer it waits for: `peer` the FIFO of the thread that will signal, whose
   receiver publishes whether it runs (FIFO_STATE); NULL: none known. */
int spin_then_sleep_for(const FifoMap *m, const FifoMap *peer, uint64_t spin_ns, double timeout_s, int sleep_ok,
                        uint64_t *waited_ns);
int wait_signal_for(const FifoMap *m, const FifoMap *peer, uint64_t spin_ns, double timeout_s, int sleep_ok,
                    uint64_t *waited_ns);

/* A FifoMap argument: the object, or NULL with TypeError. */
static inline FifoMap *as_fifo(PyObject *o) {
    if (Py_IS_TYPE(o, &FifoMapType)) return (FifoMap *)o;
    PyErr_Format(PyExc_TypeError, "expected a FifoMap, not %.100s", Py_TYPE(o)->tp_name);
    return NULL;
}

#endif
