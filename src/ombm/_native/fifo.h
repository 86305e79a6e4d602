/*
 * The signal FIFO ring's hot operations (paper §3.1.2), inline for every part that pushes or
 * takes: a bounded multi-producer ring after D. Vyukov, one CAS per push, drop when full, and
 * U. Drepper's wake protocol ("Futexes Are Tricky": the receiver announces sleep, re-checks,
 * waits; a sender wakes only a receiver that announced it sleeps). fifo.c gives them to Python.
 *
 * A cell is four u64 words: seq, segment id, offset, pad. Cell `pos & (capacity - 1)` holds the
 * entry of position pos while seq == pos + 1 (published), is free for position pos while
 * seq == pos, and is handed to the next lap (pos + capacity) when taken.
 */
#ifndef OMBM_FIFO_H
#define OMBM_FIFO_H

#include "native.h"

/* capacity - 1, read once per operation. The capacity is written once before the FIFO's name is
   published; relaxed: nothing is ordered by it. */
static inline uint64_t fifo_mask(uintptr_t f) {
    return (uint64_t)atomic_load_explicit(A32(f + FIFO_CAPACITY), memory_order_relaxed) - 1;
}

static inline au64 *fifo_cell(uintptr_t f, uint64_t mask, uint64_t pos) {
    return A64(f + FIFO_CELLS + (uintptr_t)((pos & mask) * CELL_SIZE));
}

/* Push (segment id, offset): Vyukov's push, then Drepper's wake check. Never blocks. PUSH_*. */
static inline int fifo_push(uintptr_t f, uint64_t seg, uint64_t off) {
    au64 *tail = A64(f + FIFO_TAIL);
    uint64_t mask = fifo_mask(f);
    /* relaxed: the position is only a guess until the CAS below claims it */
    uint64_t pos = atomic_load_explicit(tail, memory_order_relaxed);
    au64 *cell;
    for (;;) {
        cell = fifo_cell(f, mask, pos);
        /* acquire: pairs with the consumer's release in fifo_take, so its reads of the cell's
           previous entry happen before the writes below */
        uint64_t seq = atomic_load_explicit(&cell[0], memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            /* relaxed: claiming the position publishes nothing; the cell's seq does */
            if (atomic_compare_exchange_weak_explicit(tail, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
        } else if (dif < 0) {
            atomic_fetch_add_explicit(A64(f + FIFO_DROPS), 1, memory_order_relaxed);  /* a counter */
            return PUSH_FULL;
        } else {
            pos = atomic_load_explicit(tail, memory_order_relaxed);
        }
    }
    /* relaxed: published by the release of the seq CAS below */
    atomic_store_explicit(&cell[1], seg, memory_order_relaxed);
    atomic_store_explicit(&cell[2], off, memory_order_relaxed);
    /* Publish with a CAS so that a consumer that skipped a stalled cell (a producer killed
       between claim and publish) is detected: the late publish is lost. seq_cst, not only
       release: with the seq_cst load of the sleep word below it is one half of Drepper's
       handshake (the receiver stores its sleep word, then loads seq, both seq_cst): of a push
       and a receiver going to sleep, at least one sees the other. */
    uint64_t expect = pos;
    if (!atomic_compare_exchange_strong_explicit(&cell[0], &expect, pos + 1, memory_order_seq_cst,
                                                 memory_order_relaxed)) {
        atomic_fetch_add_explicit(A64(f + FIFO_DROPS), 1, memory_order_relaxed);
        return PUSH_FULL;
    }
    au32 *sleep = A32(f + FIFO_SLEEP);
    if (atomic_load_explicit(sleep, memory_order_seq_cst) != 0) {
        /* one of several producers takes the sleeper and wakes it */
        uint32_t old = atomic_exchange_explicit(sleep, 0, memory_order_seq_cst);
        if (old == 1) {
            futex(sleep, FUTEX_WAKE, INT_MAX, NULL);
            return PUSH_WOKE;
        }
        if (old == 2) return PUSH_DOORBELL;
    }
    return PUSH_OK;
}

/* Whether the head cell is published. seq_cst: the receiver's half of Drepper's handshake (see
   fifo_push); the head is the receiver's own position, relaxed. */
static inline int fifo_ready(uintptr_t f) {
    uint64_t pos = atomic_load_explicit(A64(f + FIFO_HEAD), memory_order_relaxed);
    uint64_t seq = atomic_load_explicit(fifo_cell(f, fifo_mask(f), pos), memory_order_seq_cst);
    return seq == pos + 1;
}

/* Whether a position was claimed that is not taken yet (published or not). */
static inline int fifo_nonempty(uintptr_t f) {
    return atomic_load_explicit(A64(f + FIFO_TAIL), memory_order_acquire) !=
           atomic_load_explicit(A64(f + FIFO_HEAD), memory_order_acquire);
}

/* Take the head entry of FIFO f: 1 and (seg, off), or 0 if there is none (or not yet published). */
static inline int fifo_take(uintptr_t f, uint64_t *seg, uint64_t *off) {
    au64 *head = A64(f + FIFO_HEAD);
    uint64_t mask = fifo_mask(f);
    uint64_t pos = atomic_load_explicit(head, memory_order_relaxed);
    for (;;) {
        au64 *cell = fifo_cell(f, mask, pos);
        /* acquire: pairs with the producer's publish, so its segment id and offset are visible */
        uint64_t seq = atomic_load_explicit(&cell[0], memory_order_acquire);
        int64_t dif = (int64_t)(seq - (pos + 1));
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(head, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed)) {
                *seg = atomic_load_explicit(&cell[1], memory_order_relaxed);
                *off = atomic_load_explicit(&cell[2], memory_order_relaxed);
                /* release: the reads above happen before a producer of the next lap writes */
                atomic_store_explicit(&cell[0], pos + mask + 1, memory_order_release);
                return 1;
            }
        } else if (dif < 0) {
            return 0;
        } else {
            pos = atomic_load_explicit(head, memory_order_relaxed);
        }
    }
}

/* Push one signal into every FIFO of the tuple `fifos` (addresses): 0 and *result 0 in the
   common case; else bits 0-14 of *result count drops (saturating), bit 15 says a futex wake was
   issued, bit 16+i that target i sleeps in an event loop and needs its doorbell rung (i < 40).
   -1 with an exception for an address that is not one. */
static inline int fifo_fanout(PyObject *fifos, uint64_t seg, uint64_t off, unsigned long long *result) {
    Py_ssize_t n = PyTuple_GET_SIZE(fifos);
    unsigned long long bits = 0, drops = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uintptr_t f;
        if (parse_addr(PyTuple_GET_ITEM(fifos, i), &f) < 0) return -1;
        int r = fifo_push(f, seg, off);
        if (r == PUSH_FULL) drops++;
        else if (r == PUSH_WOKE) bits |= 1ull << 15;
        else if (r == PUSH_DOORBELL && i < 40) bits |= 1ull << (16 + i);
    }
    *result = bits | (drops > 0x7fff ? 0x7fff : drops);
    return 0;
}

#endif
