/*
 * What the bridge's native parts share (paper §3.2.3; docs/net.md "How an update travels"): the
 * datagram layout of src/ombm/transport/datagram.py (its constants must match that module: the
 * tests compare them) and the delta of a unit against its shadow.
 */
#ifndef OMBM_NET_H
#define OMBM_NET_H

#include "native.h"

#define DG_MAGIC 0x424F          /* b"OB" */
#define DG_VERSION 1
#define DG_HEADER 24
#define DG_ENTRY 32
#define DG_CRC 4
#define DG_MAC 16
#define DG_FLAG_MAC 0x1
#define DG_ENTRY_FULL 0x1
#define DG_KIND_UPDATE 1
#define DG_MAX_MTU 65507

static inline uint16_t get16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void put16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

#define DELTA_BLOCK 4096          /* memcmp this much at a time, then bytes in the block that differs */

/* Where s[0:n] (written by local processes as we read) first differs from d[0:n], and s from there
   copied into d: that one copy is what is sent, the comparison only says where it starts. */
static inline Py_ssize_t delta_copy(const unsigned char *s, unsigned char *d, Py_ssize_t n) {
    Py_ssize_t at = 0;
    while (at < n) {  /* the block that differs (or none) */
        Py_ssize_t block = n - at < DELTA_BLOCK ? n - at : DELTA_BLOCK;
        if (memcmp(s + at, d + at, (size_t)block)) break;
        at += block;
    }
    while (at < n && s[at] == d[at]) at++;  /* s changes under us: this ends by the bound, whatever it reads */
    memcpy(d + at, s + at, (size_t)(n - at));  /* the one read of src that counts: sent from the shadow */
    return at;
}

int native_add_net_engine(PyObject *module);

#endif
