/*
 * Fault injection's generator, draws and counters (see faults.h), and their functions for Python:
 * faults_set (core/faults.py configures the process once, and a forked child again),
 * fault_drop and fault_corrupt_bit (Python's write path draws from the same generator), and the
 * counters ombm.stats() reports.
 */
#include "faults.h"

FaultState faults = {0, 0, 0, 0, 0};

#define DRAW_BITS 53

/* splitmix64: a full-period 64-bit generator whose every output goes through a strong mix */
static uint64_t fault_next(void) {
    uint64_t z = (faults.state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* 1 with probability threshold / 2^53 */
static int fault_chance(uint64_t threshold) { return (fault_next() >> (64 - DRAW_BITS)) < threshold; }

/* A uniform integer in [0, n), n > 0 (Lemire's multiply-shift; its bias, n / 2^64, is nil here). */
static uint64_t fault_below(uint64_t n) { return (uint64_t)(((unsigned __int128)fault_next() * n) >> 64); }

int fault_drop(void) {
    if (!fault_chance(faults.drop)) return 0;
    faults.dropped++;
    return 1;
}

/* The bit to flip in a message of n bytes (one draw for whether, one for which), or -1. */
static long long fault_pick_bit(Py_ssize_t n) {
    if (n <= 0 || !fault_chance(faults.corrupt)) return -1;
    faults.corrupted++;
    return (long long)fault_below((uint64_t)n * 8);
}

void fault_corrupt(unsigned char *buf, Py_ssize_t n) {
    long long bit = fault_pick_bit(n);
    if (bit >= 0) buf[bit >> 3] ^= (unsigned char)(1u << (bit & 7));
}

/* ---------------------------------------------------------------- for Python */

static int parse_probability(PyObject *o, const char *what, uint64_t *threshold) {
    double p = PyFloat_AsDouble(o);
    if (p == -1.0 && PyErr_Occurred()) return -1;
    if (!(p >= 0.0 && p <= 1.0)) {
        PyErr_Format(PyExc_ValueError, "faults_set: %s must be a probability between 0 and 1", what);
        return -1;
    }
    *threshold = (uint64_t)(p * (double)((uint64_t)1 << DRAW_BITS) + 0.5);
    if (p > 0.0 && !*threshold) *threshold = 1;  /* on is on, however rare */
    return 0;
}

/* faults_set(drop, corrupt, seed): the probabilities, and the generator's seed (any int: its low
   64 bits). The counters are left alone. */
static PyObject *n_faults_set(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "faults_set(drop, corrupt, seed)");
        return NULL;
    }
    uint64_t drop, corrupt;
    if (parse_probability(args[0], "drop", &drop) < 0 || parse_probability(args[1], "corrupt", &corrupt) < 0)
        return NULL;
    if (!PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "faults_set: the seed must be an int");
        return NULL;
    }
    unsigned long long seed = PyLong_AsUnsignedLongLongMask(args[2]);
    if (seed == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    faults.drop = drop;
    faults.corrupt = corrupt;
    faults.state = seed;
    Py_RETURN_NONE;
}

/* fault_drop() -> whether to drop the next signal to one receiver (a draw; counted if True) */
static PyObject *n_fault_drop(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    return PyBool_FromLong(faults.drop && fault_drop());
}

/* fault_corrupt_bit(nbytes) -> the bit of a message of nbytes to flip (counted), or -1 */
static PyObject *n_fault_corrupt_bit(PyObject *Py_UNUSED(self), PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong(faults.corrupt ? fault_pick_bit(n) : -1);
}

static PyObject *n_fault_counters(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue("(KK)", faults.dropped, faults.corrupted);
}

static PyObject *n_fault_counters_reset(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(ignored)) {
    faults.dropped = faults.corrupted = 0;
    Py_RETURN_NONE;
}

static PyMethodDef fault_functions[] = {
    {"faults_set", (PyCFunction)(void (*)(void))n_faults_set, METH_FASTCALL,
     "faults_set(drop, corrupt, seed): fault injection's probabilities and seed (0, 0: off)"},
    {"fault_drop", n_fault_drop, METH_NOARGS, "draw: drop the next signal to one receiver? (counted)"},
    {"fault_corrupt_bit", n_fault_corrupt_bit, METH_O,
     "draw: the bit of a message of nbytes to flip (counted), or -1"},
    {"fault_counters", n_fault_counters, METH_NOARGS, "(signals dropped, messages corrupted) by fault injection"},
    {"fault_counters_reset", n_fault_counters_reset, METH_NOARGS, "zero the fault counters (after fork)"},
    {NULL, NULL, 0, NULL},
};

int native_add_faults(PyObject *module) { return native_add(module, fault_functions, NULL); }
