/*
 * Fault injection in the native write path (DESIGN.md §4: the losses message-oriented consistency
 * allows, paper §3.2). core/faults.py reads OMBM_FAULT_DROP, OMBM_FAULT_CORRUPT and
 * OMBM_FAULT_SEED and hands the numbers to faults_set once (again in a forked child, reseeded):
 * a Writer (writer.c) then drops each signal to a receiver with probability `drop` (in the fan-out,
 * fifo_fanout) and flips one bit of a message it wrote, before the message's signal, with
 * probability `corrupt`. Python's own write path (Region.write, Router.deliver) draws from the same
 * generator through fault_drop() and fault_corrupt_bit(), so a process has one seeded sequence of
 * faults and one pair of counters, whichever path wrote.
 *
 * The generator is splitmix64 (Steele, Lea, Flood 2014), one per process. Its state and the
 * counters are touched only with the GIL held (every write path holds it). With faults off both
 * thresholds are 0, and the write path's only cost is one predictable branch on each (FAULTS_DROP,
 * FAULTS_CORRUPT); the draws are out of line (faults.c).
 */
#ifndef OMBM_FAULTS_H
#define OMBM_FAULTS_H

#include "native.h"

typedef struct {
    uint64_t drop, corrupt;      /* thresholds on a 53-bit draw: round(p * 2^53); 0: off */
    uint64_t state;              /* the generator's */
    unsigned long long dropped;  /* signals dropped: ombm.stats()'s signals_dropped_fault */
    unsigned long long corrupted;  /* messages flipped: ombm.stats()'s messages_corrupted_fault */
} FaultState;

extern FaultState faults;

#define FAULTS_DROP __builtin_expect(faults.drop != 0, 0)
#define FAULTS_CORRUPT __builtin_expect(faults.corrupt != 0, 0)

/* Draw whether to drop a signal to one receiver (counts a drop): 1 drop, 0 deliver. */
int fault_drop(void);

/* Draw whether to corrupt the message of n bytes just written at buf; if so flip one of its bits
   (a uniform one) and count it. */
void fault_corrupt(unsigned char *buf, Py_ssize_t n);

/* Called by native_add_writer: the fault functions for Python (faults_set, the draws, the counters). */
int native_add_faults(PyObject *module);

#endif
