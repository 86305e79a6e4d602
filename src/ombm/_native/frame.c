/*
 * Frames and their checksum (paper §4: the checksum folded into the unmarshal copy, "integrated
 * layer processing"): the 64-bit checksum and the fused copy-and-checksum; a frame written
 * (frame_put, frame_bytes, frame_encode); THE frame check that every reader uses (frame_take:
 * the lanes, and frame_decode under transport/wire.py). The format is transport/wire.py's.
 */
#include "frame.h"

/* ---------------------------------------------------------------- checksum */

/* 64-bit Fletcher over little-endian 8-byte words (last word zero-padded), finished by
   mixing both sums and the length through MurmurHash3's 64-bit finalizer (a bijection
   that spreads every input bit over the result): fast, order-sensitive, the same result
   for checksum(src) and copy_checksum(dst, src). A plain XOR fold of the two sums lets
   a change in the last word cancel out (a change of bits k and k+32 in both sums), which
   is exactly what a checksum of a checksum produces. */
static inline uint64_t fmix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

static inline uint64_t fold(uint64_t a, uint64_t b, Py_ssize_t n) {
    return fmix64(a ^ fmix64(b + (uint64_t)n * 0x9E3779B97F4A7C15ull));
}

/* The checksum of src[0:n], copying it to dst (unless NULL) in the same pass. */
static uint64_t sum_copy(unsigned char *dst, const unsigned char *src, Py_ssize_t n) {
    uint64_t a = 0, b = 0, w;
    Py_ssize_t i = 0;
    /* four words a step: the same sums as one word at a time (b gains 4a + 4w0 + 3w1 + 2w2 + w3),
       without the word-to-word dependency of the plain loop */
    for (; i + 32 <= n; i += 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, src + i, 8); memcpy(&w1, src + i + 8, 8);
        memcpy(&w2, src + i + 16, 8); memcpy(&w3, src + i + 24, 8);
        if (dst) memcpy(dst + i, src + i, 32);
        b += 4 * (a + w0) + 3 * w1 + 2 * w2 + w3;
        a += w0 + w1 + w2 + w3;
    }
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, src + i, 8);
        if (dst) memcpy(dst + i, &w, 8);
        a += w;
        b += a;
    }
    if (i < n) {
        w = 0;
        memcpy(&w, src + i, (size_t)(n - i));
        if (dst) memcpy(dst + i, src + i, (size_t)(n - i));
        a += w;
        b += a;
    }
    return fold(a, b, n);
}

/* A checksum of n bytes, with the GIL released when it is long enough to matter. */
static uint64_t sum_copy_released(unsigned char *dst, const unsigned char *src, Py_ssize_t n) {
    if (n < 65536) return sum_copy(dst, src, n);
    uint64_t s;
    Py_BEGIN_ALLOW_THREADS
    s = sum_copy(dst, src, n);
    Py_END_ALLOW_THREADS
    return s;
}

static PyObject *n_checksum(PyObject *Py_UNUSED(self), PyObject *arg) {
    Py_buffer v;
    if (PyObject_GetBuffer(arg, &v, PyBUF_SIMPLE) < 0) return NULL;
    uint64_t s = sum_copy_released(NULL, v.buf, v.len);
    PyBuffer_Release(&v);
    return PyLong_FromUnsignedLongLong(s);
}

/* copy_checksum(dst, src): copy src into the start of dst and return the checksum
   of what was read, computed in the same pass (paper §4, integrated layer processing). */
static PyObject *n_copy_checksum(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *dsto, *srco;
    if (!PyArg_ParseTuple(args, "OO", &dsto, &srco)) return NULL;
    Py_buffer d, s;
    if (PyObject_GetBuffer(dsto, &d, PyBUF_WRITABLE) < 0) return NULL;
    if (PyObject_GetBuffer(srco, &s, PyBUF_SIMPLE) < 0) { PyBuffer_Release(&d); return NULL; }
    if (d.len < s.len) {
        PyBuffer_Release(&d); PyBuffer_Release(&s);
        PyErr_SetString(PyExc_ValueError, "copy_checksum: destination smaller than source");
        return NULL;
    }
    uint64_t sum = sum_copy_released(d.buf, s.buf, s.len);
    PyBuffer_Release(&d); PyBuffer_Release(&s);
    return PyLong_FromUnsignedLongLong(sum);
}

/* ---------------------------------------------------------------- writing a frame */

static inline void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t get16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }

void frame_put(unsigned char *d, const void *payload, const frame_trailer *t) {
    Py_ssize_t plen = (Py_ssize_t)t->payload_len;
    memcpy(d, payload, (size_t)plen);
    unsigned char *p = d + plen;
    put64(p, t->connection_id); put64(p + 8, t->message_id); put64(p + 16, t->ack);
    put32(p + 24, t->payload_len); put32(p + 28, t->credit);
    put16(p + 32, t->frag_index); put16(p + 34, t->frag_count);
    p[36] = t->kind; p[37] = 0; put16(p + 38, FRAME_MAGIC);
    /* summed where it was written, stored last (in a slot: the last 8 bytes, which signal) */
    put64(p + 40, sum_copy(NULL, d, plen + TRAILER_HEAD));
}

PyObject *frame_bytes(const void *payload, const frame_trailer *t) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)t->payload_len + TRAILER);
    if (!out) return NULL;
    frame_put((unsigned char *)PyBytes_AS_STRING(out), payload, t);
    return out;
}

/* frame_encode(kind, connection_id, message_id, payload, frag_index, frag_count, ack, credit) -> bytes */
static PyObject *n_frame_encode(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "frame_encode takes 8 arguments");
        return NULL;
    }
    long kind = PyLong_AsLong(args[0]);
    unsigned long long conn = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long msg = PyLong_AsUnsignedLongLong(args[2]);
    long idx = PyLong_AsLong(args[4]), count = PyLong_AsLong(args[5]);
    unsigned long long ack = PyLong_AsUnsignedLongLong(args[6]);
    long long credit = PyLong_AsLongLong(args[7]);
    if (PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "frame field out of range");
        }
        return NULL;
    }
    if (kind < 1 || kind > 255 || idx < 0 || idx >= count || count > 0xFFFF || credit < 0 || credit > 0xFFFFFFFFll) {
        PyErr_SetString(PyExc_ValueError, "bad frame kind, fragment or credit");
        return NULL;
    }
    Py_buffer p;
    if (PyObject_GetBuffer(args[3], &p, PyBUF_SIMPLE) < 0) return NULL;
    if (p.len > 0xFFFFFFFFll) {
        PyBuffer_Release(&p);
        PyErr_SetString(PyExc_ValueError, "payload too large for a frame");
        return NULL;
    }
    frame_trailer t = {conn, msg, ack, (uint32_t)p.len, (uint32_t)credit, (uint16_t)idx, (uint16_t)count,
                       (uint8_t)kind};
    PyObject *out = frame_bytes(p.buf, &t);
    PyBuffer_Release(&p);
    return out;
}

/* ---------------------------------------------------------------- THE frame check */

PyObject *frame_take(const unsigned char *b, Py_ssize_t n, int as_bytearray, frame_trailer *t, const char **why) {
    *why = NULL;
    if (n < TRAILER) {
        *why = "buffer too short for a frame trailer";
        return NULL;
    }
    /* the length is read once, so the bound checked is the bound copied; the sum is compared
       with what the copy read */
    uint32_t plen = get32(b + n - 24);
    uint64_t total = get64(b + n - 8);
    if ((Py_ssize_t)plen > n - TRAILER) {
        *why = "payload length overruns the buffer";
        return NULL;
    }
    Py_ssize_t size = (Py_ssize_t)plen + TRAILER_HEAD;
    PyObject *copy = as_bytearray ? PyByteArray_FromStringAndSize(NULL, size) : PyBytes_FromStringAndSize(NULL, size);
    if (!copy) return NULL;
    unsigned char *c = (unsigned char *)(as_bytearray ? PyByteArray_AS_STRING(copy) : PyBytes_AS_STRING(copy));
    if (sum_copy(c, b + n - TRAILER - plen, size) != total) {
        Py_DECREF(copy);
        *why = "checksum mismatch (corrupt, torn or overwritten frame)";
        return NULL;
    }
    const unsigned char *p = c + plen;  /* every field from the private copy */
    t->connection_id = get64(p); t->message_id = get64(p + 8); t->ack = get64(p + 16);
    t->payload_len = get32(p + 24); t->credit = get32(p + 28);
    t->frag_index = get16(p + 32); t->frag_count = get16(p + 34);
    t->kind = p[36];
    if (get16(p + 38) != FRAME_MAGIC || p[37] != 0 || t->payload_len != plen || t->frag_index >= t->frag_count) {
        Py_DECREF(copy);
        *why = "malformed trailer (magic, flags, length or fragment)";
        return NULL;
    }
    if (as_bytearray ? PyByteArray_Resize(copy, plen) < 0 : _PyBytes_Resize(&copy, plen) < 0) {
        if (as_bytearray) Py_DECREF(copy);  /* _PyBytes_Resize released it */
        return NULL;
    }
    return copy;
}

PyObject *frame_fields(PyObject *kind, const frame_trailer *t, PyObject *payload) {
    return Py_BuildValue("(OKKiiKOk)", kind, (unsigned long long)t->connection_id,
                         (unsigned long long)t->message_id, (int)t->frag_index, (int)t->frag_count,
                         (unsigned long long)t->ack, payload, (unsigned long)t->credit);
}

PyObject *frame_decode_fields(const unsigned char *b, Py_ssize_t n, PyObject *kinds) {
    frame_trailer t;
    const char *why;
    PyObject *payload = frame_take(b, n, 1, &t, &why);
    if (!payload) {
        if (why) PyErr_SetString(PyExc_ValueError, why);
        return NULL;
    }
    if (t.kind >= PyTuple_GET_SIZE(kinds) || PyTuple_GET_ITEM(kinds, t.kind) == Py_None) {
        Py_DECREF(payload);
        PyErr_SetString(PyExc_ValueError, "unknown frame kind");
        return NULL;
    }
    PyObject *fields = frame_fields(PyTuple_GET_ITEM(kinds, t.kind), &t, payload);
    Py_DECREF(payload);
    return fields;
}

/* frame_decode(view, kinds) -> (kind, connection id, message id, frag index, frag count, ack,
   payload bytearray, credit). The frame ends at the end of `view`, which may be shared memory a
   hostile peer writes (see frame_take). `kinds[k]` is the object returned for kind k (None:
   invalid). Raises ValueError on anything wrong. */
static PyObject *n_frame_decode(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "frame_decode(view, kinds_tuple)");
        return NULL;
    }
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *r = frame_decode_fields(v.buf, v.len, args[1]);
    PyBuffer_Release(&v);
    return r;
}

static PyMethodDef frame_functions[] = {
    {"frame_encode", (PyCFunction)(void (*)(void))n_frame_encode, METH_FASTCALL,
     "encode an RPC frame: payload + trailer"},
    {"frame_decode", (PyCFunction)(void (*)(void))n_frame_decode, METH_FASTCALL,
     "validate and copy out the frame ending a buffer"},
    {"checksum", n_checksum, METH_O, "64-bit Fletcher checksum of a buffer"},
    {"copy_checksum", n_copy_checksum, METH_VARARGS, "copy src into dst, returning the checksum of src"},
    {NULL, NULL, 0, NULL},
};

int native_add_frame(PyObject *module) { return native_add(module, frame_functions, NULL); }
