/*
 * The Writer (writer.c): signal-on-write, Region.write's fast path (paper §3.3). Declared here
 * for the lanes, which write their frames through a channel's Writer.
 */
#ifndef OMBM_WRITER_H
#define OMBM_WRITER_H

#include "fifo.h"

typedef struct {
    PyObject_HEAD
    unsigned char *base;      /* NULL once closed */
    Py_ssize_t size;
    Py_ssize_t unit;          /* signal-on-write unit, 0: this binding raises no signal */
    int message;              /* a message-consistency segment: fault injection may corrupt what is written */
    uintptr_t version_addr;
    uint64_t version;
    unsigned long long seg_id;
    PyObject *routes;         /* dict: unit offset -> (FifoMaps, memory refs, kernel refs) */
    PyObject *slow, *route_fn, *deliver_fn, *after_fn;
    Py_ssize_t next_unit;     /* send(): the unit the next message ends (round robin) */
} Writer;

extern PyTypeObject WriterType;

/* Signal every receiver watching the unit at offset `start` (a multiple of the unit), writing
   nothing: 0, or -1 with an exception. */
int writer_deliver(Writer *w, Py_ssize_t start);

/* Write one whole frame (see frame.h) of `payload` into the next unit, raising its signal:
   0, or -1 with an exception. */
int writer_send_frame(Writer *w, unsigned kind, uint64_t conn, uint64_t msg, uint64_t ack,
                      const char *payload, Py_ssize_t plen);

/* The FIFO the last frame written signalled first: the first FIFO of the route the Writer cached
   for the unit writer_send_frame last filled (a lane's peer: the receiver that will answer, a
   server's or its host's bridge's), a new reference; NULL if none is known. The waits follow its
   published state (sync.c); a FifoMap keeps its mapping, so the caller may read it without the GIL. */
static inline FifoMap *writer_peer(Writer *w) {
    if (!w || !w->base || w->unit <= 0 || w->size < w->unit || !w->routes) return NULL;
    Py_ssize_t units = w->size / w->unit;
    Py_ssize_t slot = (w->next_unit + units - 1) % units;  /* (writer_next_unit moved past it) */
    PyObject *key = PyLong_FromSsize_t(slot * w->unit);
    if (!key) { PyErr_Clear(); return NULL; }
    PyObject *route = PyDict_GetItemWithError(w->routes, key);  /* (a checked tuple: writer_deliver) */
    Py_DECREF(key);
    if (!route) { PyErr_Clear(); return NULL; }
    PyObject *fifos = PyTuple_GET_ITEM(route, 0);
    if (!PyTuple_GET_SIZE(fifos) || !Py_IS_TYPE(PyTuple_GET_ITEM(fifos, 0), &FifoMapType)) return NULL;
    return (FifoMap *)Py_NewRef(PyTuple_GET_ITEM(fifos, 0));
}

#endif