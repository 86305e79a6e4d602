/*
 * The Writer (writer.c): signal-on-write, Region.write's fast path (paper §3.3). Declared here
 * for the lanes, which write their frames through a channel's Writer.
 */
#ifndef OMBM_WRITER_H
#define OMBM_WRITER_H

#include "native.h"

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

/* Write one whole frame (see frame.h) of `payload` into the next unit, raising its signal:
   0, or -1 with an exception. */
int writer_send_frame(Writer *w, unsigned kind, uint64_t conn, uint64_t msg, uint64_t ack,
                      const char *payload, Py_ssize_t plen);

#endif
