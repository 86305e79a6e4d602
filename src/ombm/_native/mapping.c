/*
 * Mappings that hold no descriptor (issue 11, item 6): Python's mmap.mmap keeps a dup() of the file's
 * descriptor for as long as the mapping lives, so every mapped segment and FIFO cost a descriptor and
 * a server ran out of them at about 140 clients under `ulimit -n 1024`. Here a file is mapped over
 * the pages of an anonymous mmap.mmap (MAP_FIXED): the object keeps its address, its buffer and its
 * munmap at close, and no descriptor; the caller closes the file's descriptor right after.
 */
#include "native.h"

#include <errno.h>
#include <sys/mman.h>

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

static PyMethodDef functions[] = {
    {"map_over", n_map_over, METH_VARARGS,
     "map_over(anonymous_mmap, fd, offset, writable): map the file over the mmap's pages (MAP_FIXED, shared)"},
    {NULL, NULL, 0, NULL},
};

int native_add_mapping(PyObject *module) { return native_add(module, functions, NULL); }
