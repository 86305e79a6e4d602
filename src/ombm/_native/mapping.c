/*
 * Mappings of shared files: no descriptor held, and no SIGBUS from a peer (issue 11, items 2 and 6).
 *
 * No descriptor. Python's mmap.mmap keeps a dup() of the file's descriptor for as long as the
 * mapping lives, so every mapped segment and FIFO cost a descriptor and a server ran out of them at
 * about 140 clients under `ulimit -n 1024`. Here a file is mapped over the pages of an anonymous
 * mmap.mmap (MAP_FIXED): the object keeps its address, its buffer and its munmap at close, and no
 * descriptor; the caller closes the file's descriptor right after.
 *
 * No SIGBUS. A page of a shared file mapping past the file's end raises SIGBUS when touched, so
 * any process that can open a segment, a FIFO or a channel (the peer that made it, or a bystander
 * of the same user) could kill every process reading or writing it with one ftruncate(); and a
 * page of a sparse file that tmpfs cannot allocate (/dev/shm full) does the same. tmpfs files
 * cannot be sealed (F_SEAL_SHRINK is for memfds, which have no name to open). So every mapping
 * made here is *guarded*, as Wayland compositors guard their clients' shm pools: a process-wide
 * SIGBUS handler looks the faulting address up in the table of guarded mappings and, if it is in
 * one, replaces that whole mapping with anonymous zero pages of the same protection (mmap
 * MAP_FIXED, which is a system call and safe in a handler) and marks it broken. The access is
 * restarted and reads zeros; writes to it reach nobody. The layers above see a broken mapping as
 * corrupt input (zeros fail every frame check) and ask `broken` to end that channel with an error.
 * A SIGBUS anywhere else goes to the handler that was installed before (faulthandler's, say), then
 * kills the process as it would have.
 *
 * The table is a fixed array (a signal handler cannot allocate or lock): a slot is published by
 * storing its start last (release) and withdrawn by clearing it first, before the munmap. Python
 * calls guard/unguard with the GIL held, so only the handler runs concurrently with them.
 */
#include "native.h"

#include <signal.h>
#include <sys/mman.h>

#define GUARD_SLOTS 65536 /* guarded mappings at once: a server with 1,000 clients needs ~5,000 */

typedef struct {
    _Atomic uintptr_t start; /* 0: free */
    _Atomic uintptr_t length;
    _Atomic int prot;
    _Atomic int broken;
} guard_t;

static guard_t guards[GUARD_SLOTS];
static _Atomic size_t guards_used;       /* slots at or past this one were never used */
static size_t free_hint;                 /* where the next registration starts looking (GIL) */
static _Atomic uint64_t faults_absorbed; /* SIGBUSes turned into broken mappings */
static struct sigaction previous;        /* the SIGBUS disposition before ours */
static _Atomic int chained;              /* the previous handler was called once already */

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    int saved_errno = errno;
    if (info != NULL && info->si_code > 0) { /* raised by the kernel for an access at si_addr */
        uintptr_t at = (uintptr_t)info->si_addr;
        size_t used = atomic_load_explicit(&guards_used, memory_order_acquire);
        for (size_t i = 0; i < used; i++) {
            uintptr_t start = atomic_load_explicit(&guards[i].start, memory_order_acquire);
            if (start == 0 || at < start) continue;
            uintptr_t length = atomic_load_explicit(&guards[i].length, memory_order_relaxed);
            int prot = atomic_load_explicit(&guards[i].prot, memory_order_relaxed);
            if (at - start >= length || atomic_load(&guards[i].start) != start) continue;
            void *got = mmap((void *)start, length, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (got == MAP_FAILED) break; /* cannot absorb it: die of it, as without us */
            atomic_store(&guards[i].broken, 1);
            atomic_fetch_add(&faults_absorbed, 1);
            errno = saved_errno;
            return; /* the access is restarted on the zero pages */
        }
    }
    /* not ours: what the process would have done without us */
    if (previous.sa_handler == SIG_IGN && (info == NULL || info->si_code <= 0)) {
        errno = saved_errno;
        return; /* a sent SIGBUS that was being ignored */
    }
    if (!atomic_exchange(&chained, 1)) {
        if (previous.sa_flags & SA_SIGINFO) {
            if (previous.sa_sigaction != NULL) previous.sa_sigaction(sig, info, context);
        } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
            previous.sa_handler(sig);
        }
    }
    /* then die of it: a fault repeats when the access restarts, a sent signal is sent again */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, NULL);
    if (info == NULL || info->si_code <= 0) raise(SIGBUS);
    errno = saved_errno;
}

/* Our handler first in line (again, if another was installed over it since: faulthandler.enable()). */
static int install_handler(void) {
    struct sigaction current;
    if (sigaction(SIGBUS, NULL, &current) < 0) return -1;
    if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_sigbus) return 0;
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_sigbus;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&ours.sa_mask);
    previous = current;
    atomic_store(&chained, 0);
    return sigaction(SIGBUS, &ours, NULL);
}

/* Guard [start, start+length): the slot's number, or -1 (OSError set) when the table is full. */
static Py_ssize_t guard(uintptr_t start, size_t length, int prot) {
    if (install_handler() < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    for (size_t n = 0; n < GUARD_SLOTS; n++) {
        size_t i = (free_hint + n) % GUARD_SLOTS;
        if (atomic_load(&guards[i].start) != 0) continue;
        atomic_store(&guards[i].length, length);
        atomic_store(&guards[i].prot, prot);
        atomic_store(&guards[i].broken, 0);
        if (i >= atomic_load(&guards_used)) atomic_store_explicit(&guards_used, i + 1, memory_order_release);
        atomic_store_explicit(&guards[i].start, start, memory_order_release);
        free_hint = i + 1;
        return (Py_ssize_t)i;
    }
    errno = ENOMEM;
    PyErr_Format(PyExc_OSError, "more than %d shared mappings at once in this process", GUARD_SLOTS);
    return -1;
}

static PyObject *n_map_over(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *target;
    int fd, writable;
    long long offset;
    if (!PyArg_ParseTuple(args, "OiLp:map_over", &target, &fd, &offset, &writable)) return NULL;
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "offset must be >= 0");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(target, &view, PyBUF_SIMPLE) < 0) return NULL;
    void *at = view.buf;
    size_t len = (size_t)view.len;
    PyBuffer_Release(&view);
    long page = sysconf(_SC_PAGESIZE);
    if (len == 0 || (uintptr_t)at % (uintptr_t)page) {
        PyErr_SetString(PyExc_ValueError, "map_over needs a page-aligned, non-empty mapping");
        return NULL;
    }
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *got = mmap(at, len, prot, MAP_SHARED | MAP_FIXED, fd, (off_t)offset);
    if (got == MAP_FAILED) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *n_guard(PyObject *Py_UNUSED(self), PyObject *args) {
    unsigned long long start, length;
    int writable;
    if (!PyArg_ParseTuple(args, "KKp:guard", &start, &length, &writable)) return NULL;
    long page = sysconf(_SC_PAGESIZE);
    if (start == 0 || length == 0 || start % (unsigned long long)page || length > UINTPTR_MAX - start) {
        PyErr_SetString(PyExc_ValueError, "guard needs a page-aligned, non-empty range");
        return NULL;
    }
    Py_ssize_t slot = guard((uintptr_t)start, (size_t)length, PROT_READ | (writable ? PROT_WRITE : 0));
    return slot < 0 ? NULL : PyLong_FromSsize_t(slot);
}

/* The guard named by the arguments (slot, start) if it still guards the mapping at start, else NULL
 * (an exception set). */
static guard_t *guard_arg(PyObject *args, const char *format) {
    Py_ssize_t slot;
    unsigned long long start;
    if (!PyArg_ParseTuple(args, format, &slot, &start)) return NULL;
    if (slot < 0 || slot >= GUARD_SLOTS || start == 0 || atomic_load(&guards[slot].start) != (uintptr_t)start) {
        PyErr_SetString(PyExc_ValueError, "no guarded mapping there");
        return NULL;
    }
    return &guards[slot];
}

static PyObject *n_unguard(PyObject *Py_UNUSED(self), PyObject *args) {
    guard_t *g = guard_arg(args, "nK:unguard");
    if (g == NULL) return NULL;
    atomic_store_explicit(&g->start, 0, memory_order_release);
    Py_RETURN_NONE;
}

static PyObject *n_mapping_broken(PyObject *Py_UNUSED(self), PyObject *args) {
    guard_t *g = guard_arg(args, "nK:mapping_broken");
    return g == NULL ? NULL : PyBool_FromLong(atomic_load(&g->broken));
}

static PyObject *n_mappings_broken(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    return PyLong_FromUnsignedLongLong(atomic_load(&faults_absorbed));
}

static PyObject *n_mappings_broken_reset(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    atomic_store(&faults_absorbed, 0);
    Py_RETURN_NONE;
}

static PyMethodDef functions[] = {
    {"map_over", n_map_over, METH_VARARGS,
     "map_over(anonymous_mmap, fd, offset, writable): map the file over the mmap's pages (MAP_FIXED, shared)"},
    {"guard", n_guard, METH_VARARGS,
     "guard(start, length, writable) -> slot: a SIGBUS in [start, start+length) breaks that mapping instead"},
    {"unguard", n_unguard, METH_VARARGS, "unguard(slot, start): the mapping at start is about to be unmapped"},
    {"mapping_broken", n_mapping_broken, METH_VARARGS,
     "mapping_broken(slot, start) -> bool: a SIGBUS in the mapping replaced it with zero pages"},
    {"mappings_broken", n_mappings_broken, METH_NOARGS,
     "mappings_broken() -> int: SIGBUSes in guarded mappings this process turned into broken mappings"},
    {"mappings_broken_reset", n_mappings_broken_reset, METH_NOARGS, "mappings_broken_reset(): count from 0"},
    {NULL, NULL, 0, NULL},
};

int native_add_mapping(PyObject *module) { return native_add(module, functions, NULL); }
