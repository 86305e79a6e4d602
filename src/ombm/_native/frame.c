/*
 * Frames and their checksum (paper §4: the checksum folded into the unmarshal copy, "integrated
 * layer processing"): the checksum (CRC32C, crc32c.c) and the fused copy-and-checksum for Python;
 * a frame written (frame_put, frame_bytes, frame_encode); THE frame check that every reader uses
 * (frame_take: the lanes, and frame_decode under transport/wire.py); the spans of a bulk segment
 * and the guard that routes large payloads away from the lanes (rpc/bulk.py). The format is
 * transport/wire.py's.
 */
#include "frame.h"

static inline void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t get16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* ---------------------------------------------------------------- checksum */

/* The checksum of src[0:n] continued from crc, copying it to dst (unless NULL) in the same pass,
   with the GIL released when it is long enough to matter. */
static uint32_t crc_copy_released(unsigned char *dst, const unsigned char *src, Py_ssize_t n, uint32_t crc) {
    if (n < 65536) return crc32c_copy(dst, src, (size_t)n, crc);
    Py_BEGIN_ALLOW_THREADS
    crc = crc32c_copy(dst, src, (size_t)n, crc);
    Py_END_ALLOW_THREADS
    return crc;
}

/* A continued CRC from Python: a 32-bit value. 0 and no exception, or -1 with one. */
static int crc_argument(PyObject *o, uint32_t *crc) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;  /* not an int: TypeError */
        PyErr_Clear();
        v = ~0ull;  /* negative or huge */
    }
    if (v > 0xFFFFFFFFull) {
        PyErr_SetString(PyExc_ValueError, "a CRC32C is a 32-bit value");
        return -1;
    }
    *crc = (uint32_t)v;
    return 0;
}

/* checksum(buffer, crc=0) and checksum_table(buffer, crc=0): the CRC32C of the buffer, continued
   from crc (the CRC of what came before it). */
static PyObject *checksum_by(PyObject *const *args, Py_ssize_t nargs, int table) {
    uint32_t crc = 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "checksum(buffer, crc=0)");
        return NULL;
    }
    if (nargs == 2 && crc_argument(args[1], &crc) < 0) return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0) return NULL;
    crc = table ? crc32c_table_copy(NULL, v.buf, (size_t)v.len, crc) : crc_copy_released(NULL, v.buf, v.len, crc);
    PyBuffer_Release(&v);
    return PyLong_FromUnsignedLong(crc);
}

static PyObject *n_checksum(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    return checksum_by(args, nargs, 0);
}

static PyObject *n_checksum_table(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    return checksum_by(args, nargs, 1);
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
    uint32_t crc = crc_copy_released(d.buf, s.buf, s.len, 0);
    PyBuffer_Release(&d); PyBuffer_Release(&s);
    return PyLong_FromUnsignedLong(crc);
}

/* ---------------------------------------------------------------- spans of a bulk segment */

/* span_put(segment, offset, seq, data) -> crc: write the span header (u64 seq, u64 length) at
   segment[offset] and data after it, the CRC32C of header + data computed in that one copy
   (rpc/bulk.py owns the layout). ValueError if it does not fit. */
static PyObject *n_span_put(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "span_put(segment, offset, seq, data)");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer d, s;
    if (PyObject_GetBuffer(args[0], &d, PyBUF_WRITABLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[3], &s, PyBUF_SIMPLE) < 0) { PyBuffer_Release(&d); return NULL; }
    if (offset < 0 || offset > d.len || d.len - offset < 16 || s.len > d.len - offset - 16) {
        PyBuffer_Release(&d); PyBuffer_Release(&s);
        PyErr_SetString(PyExc_ValueError, "span_put: the span does not fit the segment");
        return NULL;
    }
    unsigned char head[16], *at = (unsigned char *)d.buf + offset;
    put64(head, seq); put64(head + 8, (uint64_t)s.len);
    uint32_t crc = crc32c_copy(at, head, 16, 0);
    crc = crc_copy_released(at + 16, s.buf, s.len, crc);
    PyBuffer_Release(&d); PyBuffer_Release(&s);
    return PyLong_FromUnsignedLong(crc);
}

/* span_take(segment, offset, length, seq, crc) -> bytes or None: the span at segment[offset]
   (memory the sender, or anyone, may be writing) copied out once, header and data, the CRC32C
   folded into the copy; then checked: the bytes (the caller's own) if the checksum and the
   header's seq and length are those expected, None if not. ValueError if the span is not inside
   the segment. */
static PyObject *n_span_take(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "span_take(segment, offset, length, seq, crc)");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]), length = PyLong_AsSsize_t(args[2]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[3]);
    uint32_t want;
    if (PyErr_Occurred() || crc_argument(args[4], &want) < 0) return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0) return NULL;
    if (offset < 0 || length < 0 || offset > v.len || v.len - offset < 16 || length > v.len - offset - 16) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "span_take: the span is not inside the segment");
        return NULL;
    }
    const unsigned char *at = (const unsigned char *)v.buf + offset;
    unsigned char head[16];
    uint32_t crc = crc32c_copy(head, at, 16, 0);  /* copied, then checked */
    PyObject *out = PyBytes_FromStringAndSize(NULL, length);
    if (out) crc = crc_copy_released((unsigned char *)PyBytes_AS_STRING(out), at + 16, length, crc);
    PyBuffer_Release(&v);
    if (!out) return NULL;
    if (crc != want || get64(head) != seq || get64(head + 8) != (uint64_t)length) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

/* A span's data lent as a read-only buffer (rpc/bulk.py's views): the segment's buffer it was cut
   from is held (so the mapping stays while any view derived from it lives); weak-referenceable, so
   that the receiver learns when the last view of the span is gone (then its sender may reuse it). */
typedef struct {
    PyObject_HEAD
    Py_buffer source;
    const unsigned char *data;
    Py_ssize_t length;
    PyObject *weakrefs;
} SpanView;

static int SpanView_getbuffer(SpanView *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, (void *)self->data, self->length, 1, flags);  /* read-only */
}

static void SpanView_dealloc(SpanView *self) {
    if (self->weakrefs) PyObject_ClearWeakRefs((PyObject *)self);
    PyBuffer_Release(&self->source);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyBufferProcs SpanView_buffer = {(getbufferproc)SpanView_getbuffer, NULL};

static PyTypeObject SpanViewType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ombm._native.SpanView",
    .tp_basicsize = sizeof(SpanView),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)SpanView_dealloc,
    .tp_as_buffer = &SpanView_buffer,
    .tp_weaklistoffset = offsetof(SpanView, weakrefs),
    .tp_doc = "a bulk span's data, read-only, in the peer's segment (made by span_view)",
};

/* span_view(segment, offset, length, seq) -> SpanView or None: the span at segment[offset] lent
   in place, no copy and no checksum (the peer can still write it: rpc/bulk.py documents what a
   view guarantees); its header (seq, length) copied once and checked: None if it is not the
   span expected (reused: a later generation). ValueError if the span is not inside the segment. */
static PyObject *n_span_view(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "span_view(segment, offset, length, seq)");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]), length = PyLong_AsSsize_t(args[2]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    SpanView *view = PyObject_New(SpanView, &SpanViewType);
    if (!view) return NULL;
    view->weakrefs = NULL;
    if (PyObject_GetBuffer(args[0], &view->source, PyBUF_SIMPLE) < 0) {
        view->source.obj = NULL;  /* (PyBuffer_Release of nothing in the dealloc) */
        Py_DECREF(view);
        return NULL;
    }
    Py_ssize_t n = view->source.len;
    if (offset < 0 || length < 0 || offset > n || n - offset < 16 || length > n - offset - 16) {
        Py_DECREF(view);
        PyErr_SetString(PyExc_ValueError, "span_view: the span is not inside the segment");
        return NULL;
    }
    const unsigned char *at = (const unsigned char *)view->source.buf + offset;
    unsigned char head[16];
    memcpy(head, at, 16);  /* copied, then checked */
    if (get64(head) != seq || get64(head + 8) != (uint64_t)length) {
        Py_DECREF(view);
        Py_RETURN_NONE;
    }
    view->data = at + 16;
    view->length = length;
    return (PyObject *)view;
}

/* ---------------------------------------------------------------- large payloads, routed away */

Py_ssize_t frame_buffer_size(PyObject *o) {
    if (PyBytes_CheckExact(o)) return PyBytes_GET_SIZE(o);
    if (PyByteArray_CheckExact(o)) return PyByteArray_GET_SIZE(o);
    if (PyLong_CheckExact(o) || PyUnicode_CheckExact(o) || PyFloat_CheckExact(o) || o == Py_None || PyBool_Check(o))
        return -1;
    if (PyMemoryView_Check(o)) return PyMemoryView_GET_BUFFER(o)->len;
    PyBufferProcs *procs = Py_TYPE(o)->tp_as_buffer;
    if (!procs || !procs->bf_getbuffer) return -1;
    Py_buffer v;
    if (PyObject_GetBuffer(o, &v, PyBUF_ND) < 0) {  /* not C-contiguous: not ours to route */
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t n = v.len;
    PyBuffer_Release(&v);
    return n;
}

static int is_large(PyObject *o, Py_ssize_t threshold) { return frame_buffer_size(o) >= threshold; }

/* The guard's pack(obj), self = (inner pack, threshold int, exception class): obj is a call
   [method, [args...], {kwargs}] or a reply [0, result] as rpc/marshal.py packs them; if an
   argument, keyword value or the result is a bytes-like object of threshold bytes or more, raise
   the exception (the lanes then leave the message to Python, which sends it through the bulk
   segment), else pack it with the inner packer. A few type checks per message otherwise. */
static PyObject *guard_pack(PyObject *self, PyObject *obj) {
    PyObject *inner = PyTuple_GET_ITEM(self, 0), *exc = PyTuple_GET_ITEM(self, 2);
    Py_ssize_t threshold = PyLong_AsSsize_t(PyTuple_GET_ITEM(self, 1));
    if (PyList_CheckExact(obj)) {
        Py_ssize_t n = PyList_GET_SIZE(obj);
        int large = 0;
        if (n == 2) {
            large = is_large(PyList_GET_ITEM(obj, 1), threshold);
        } else if (n == 3) {
            PyObject *args = PyList_GET_ITEM(obj, 1), *kwargs = PyList_GET_ITEM(obj, 2);
            if (PyList_CheckExact(args))
                for (Py_ssize_t i = 0; !large && i < PyList_GET_SIZE(args); i++)
                    large = is_large(PyList_GET_ITEM(args, i), threshold);
            if (PyDict_CheckExact(kwargs)) {
                Py_ssize_t pos = 0;
                PyObject *key, *value;
                while (!large && PyDict_Next(kwargs, &pos, &key, &value)) large = is_large(value, threshold);
            }
        }
        if (large) {
            PyErr_SetString(exc, "a large payload: it travels through the bulk segment");
            return NULL;
        }
    }
    return PyObject_CallOneArg(inner, obj);
}

static PyMethodDef guard_def = {"pack", (PyCFunction)guard_pack, METH_O,
                                "pack a message, unless it carries a large payload (then raise)"};

/* bulk_guard(pack, threshold, exception) -> a pack function (see guard_pack). */
static PyObject *n_bulk_guard(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *inner, *threshold, *exc;
    if (!PyArg_ParseTuple(args, "OO!O", &inner, &PyLong_Type, &threshold, &exc)) return NULL;
    Py_ssize_t t = PyLong_AsSsize_t(threshold);
    if (t == -1 && PyErr_Occurred()) return NULL;
    if (!PyCallable_Check(inner) || t < 1 || !PyExceptionClass_Check(exc)) {
        PyErr_SetString(PyExc_ValueError, "bulk_guard(pack callable, threshold >= 1, exception class)");
        return NULL;
    }
    PyObject *state = PyTuple_Pack(3, inner, threshold, exc);
    if (!state) return NULL;
    PyObject *fn = PyCFunction_New(&guard_def, state);
    Py_DECREF(state);
    return fn;
}

/* ---------------------------------------------------------------- writing a frame */


void frame_put(unsigned char *d, const void *payload, const frame_trailer *t) {
    size_t plen = t->payload_len;
    uint32_t crc = crc32c_copy(d, payload, plen, 0);  /* the payload copied and summed in one pass */
    unsigned char *p = d + plen;
    put64(p, t->connection_id); put64(p + 8, t->message_id); put64(p + 16, t->ack);
    put32(p + 24, t->payload_len); put32(p + 28, t->credit);
    put16(p + 32, t->frag_index); put16(p + 34, t->frag_count);
    p[36] = t->kind; p[37] = 0; put16(p + 38, FRAME_MAGIC);
    /* the sum continued over the trailer where it was written, stored last (in a slot: the last
       8 bytes, which signal); a CRC32C is 32 bits, the field's high half is zero */
    put64(p + 40, crc32c_copy(NULL, p, TRAILER_HEAD, crc));
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

/* The trailer's fields from its private copy p (TRAILER_HEAD bytes) into *t; 0, or -1 if it is
   malformed for a payload of plen bytes. */
static int trailer_read(const unsigned char *p, uint32_t plen, frame_trailer *t) {
    t->connection_id = get64(p); t->message_id = get64(p + 8); t->ack = get64(p + 16);
    t->payload_len = get32(p + 24); t->credit = get32(p + 28);
    t->frag_index = get16(p + 32); t->frag_count = get16(p + 34);
    t->kind = p[36];
    return get16(p + 38) != FRAME_MAGIC || p[37] != 0 || t->payload_len != plen || t->frag_index >= t->frag_count
               ? -1 : 0;
}

static const char WHY_SHORT[] = "buffer too short for a frame trailer";
static const char WHY_OVERRUN[] = "payload length overruns the buffer";
static const char WHY_SUM[] = "checksum mismatch (corrupt, torn or overwritten frame)";
static const char WHY_TRAILER[] = "malformed trailer (magic, flags, length or fragment)";

PyObject *frame_take(const unsigned char *b, Py_ssize_t n, int as_bytearray, frame_trailer *t, const char **why) {
    *why = NULL;
    if (n < TRAILER) {
        *why = WHY_SHORT;
        return NULL;
    }
    /* the length is read once, so the bound checked is the bound copied; the sum is compared
       with what the copy read, all 64 bits of the field: its high half must be zero */
    uint32_t plen = get32(b + n - 24);
    uint64_t total = get64(b + n - 8);
    if ((Py_ssize_t)plen > n - TRAILER) {
        *why = WHY_OVERRUN;
        return NULL;
    }
    Py_ssize_t size = (Py_ssize_t)plen + TRAILER_HEAD;
    PyObject *copy = as_bytearray ? PyByteArray_FromStringAndSize(NULL, size) : PyBytes_FromStringAndSize(NULL, size);
    if (!copy) return NULL;
    unsigned char *c = (unsigned char *)(as_bytearray ? PyByteArray_AS_STRING(copy) : PyBytes_AS_STRING(copy));
    if ((uint64_t)crc32c_copy(c, b + n - TRAILER - plen, (size_t)size, 0) != total) {
        Py_DECREF(copy);
        *why = WHY_SUM;
        return NULL;
    }
    if (trailer_read(c + plen, plen, t) < 0) {  /* every field from the private copy */
        Py_DECREF(copy);
        *why = WHY_TRAILER;
        return NULL;
    }
    if (as_bytearray ? PyByteArray_Resize(copy, plen) < 0 : _PyBytes_Resize(&copy, plen) < 0) {
        if (as_bytearray) Py_DECREF(copy);  /* _PyBytes_Resize released it */
        return NULL;
    }
    return copy;
}

/* ---------------------------------------------------------------- one copy out of a large bin */

/* The payload copied out in order (source position pos), its checksum continued in crc, into
   env (position epos, never past pos: the placeholder is shorter than what it stands for). With
   the GIL held, as frame_take: the slot is a lane's raw pointer into a mapping that only the GIL
   keeps from being closed meanwhile (a slot's frame is at most about a slot, 128 KiB by default). */
typedef struct {
    const unsigned char *src;
    Py_ssize_t plen, pos;
    unsigned char *env;
    Py_ssize_t epos;
    uint32_t crc;
} split_cursor;

/* Copy the next k bytes into env: 0, or -1 if the payload ends first (nothing copied). */
static int split_need(split_cursor *c, uint64_t k) {
    if (k > (uint64_t)(c->plen - c->pos)) return -1;
    c->crc = crc32c_copy(c->env + c->epos, c->src + c->pos, (size_t)k, c->crc);
    c->pos += (Py_ssize_t)k;
    c->epos += (Py_ssize_t)k;
    return 0;
}

static uint64_t get_be(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* Walk one msgpack object (a bounded loop over the private copy: every item costs a byte), copying
   it into env, the body of the first bin or ext of SPLIT_MIN bytes or more into s->big. 0 if the object is well
   formed and holds no SPLIT_CODE ext of its own, -1 otherwise (an exception if *failed). */
static int split_walk(split_cursor *c, frame_split *s, int *failed) {
    uint64_t pending = 1;
    while (pending > 0) {
        pending--;
        if (split_need(c, 1) < 0) return -1;
        unsigned b = c->env[c->epos - 1];
        uint64_t children = 0, body = 0;
        int lenbytes = 0, bin = 0, ext = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) continue;
        if ((b & 0xf0) == 0x80) children = 2 * (uint64_t)(b & 15);
        else if ((b & 0xf0) == 0x90) children = b & 15;
        else if ((b & 0xe0) == 0xa0) body = b & 31;
        else if (b >= 0xc4 && b <= 0xc6) { bin = 1; lenbytes = 1 << (b - 0xc4); }
        else if (b >= 0xc7 && b <= 0xc9) { ext = 1; lenbytes = 1 << (b - 0xc7); }
        else if (b == 0xca || b == 0xcb) body = b == 0xca ? 4 : 8;
        else if (b >= 0xcc && b <= 0xcf) body = 1u << (b - 0xcc);
        else if (b >= 0xd0 && b <= 0xd3) body = 1u << (b - 0xd0);
        else if (b >= 0xd4 && b <= 0xd8) { ext = 1; body = 1u << (b - 0xd4); }
        else if (b >= 0xd9 && b <= 0xdb) lenbytes = 1 << (b - 0xd9);
        else if (b == 0xdc || b == 0xdd || b == 0xde || b == 0xdf) {
            int w = b & 1 ? 4 : 2;
            if (split_need(c, (uint64_t)w) < 0) return -1;
            children = get_be(c->env + c->epos - w, w) * (b >= 0xde ? 2 : 1);
        } else {
            return -1;  /* 0xc1: never used */
        }
        if (lenbytes) {
            if (split_need(c, (uint64_t)lenbytes) < 0) return -1;
            body = get_be(c->env + c->epos - lenbytes, lenbytes);  /* from the private copy */
        }
        if (ext) {
            if (split_need(c, 1) < 0) return -1;
            if (c->env[c->epos - 1] == SPLIT_CODE) return -1;  /* the placeholder's code on the wire */
        }
        if ((bin || (ext && lenbytes)) && !s->big && body >= SPLIT_MIN && body <= (uint64_t)(c->plen - c->pos)) {
            s->hlen = 1 + lenbytes + ext;  /* the header, already in env: replaced by the placeholder */
            s->code = ext ? c->env[c->epos - 1] : -1;
            memcpy(s->hdr, c->env + c->epos - s->hlen, (size_t)s->hlen);
            c->epos -= s->hlen;
            s->at = c->epos;
            c->env[c->epos++] = 0xd4;
            c->env[c->epos++] = SPLIT_CODE;
            c->env[c->epos++] = 0;
            s->big = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)body);
            if (!s->big) { *failed = 1; return -1; }
            c->crc = crc32c_copy((unsigned char *)PyBytes_AS_STRING(s->big), c->src + c->pos, (size_t)body, c->crc);
            c->pos += (Py_ssize_t)body;
            continue;
        }
        if (split_need(c, body) < 0) return -1;
        if (children > (uint64_t)(c->plen - c->pos)) return -1;  /* each item takes a byte at least */
        pending += children;
    }
    return 0;
}

void frame_split_clear(frame_split *s) {
    Py_CLEAR(s->env);
    Py_CLEAR(s->big);
}

PyObject *frame_split_join(const frame_split *s) {
    if (!s->big) return Py_NewRef(s->env);
    Py_ssize_t elen = PyBytes_GET_SIZE(s->env), blen = PyBytes_GET_SIZE(s->big);
    PyObject *out = PyBytes_FromStringAndSize(NULL, elen - 3 + s->hlen + blen);
    if (!out) return NULL;
    char *o = PyBytes_AS_STRING(out);
    const char *e = PyBytes_AS_STRING(s->env);
    memcpy(o, e, (size_t)s->at);
    memcpy(o + s->at, s->hdr, (size_t)s->hlen);
    memcpy(o + s->at + s->hlen, PyBytes_AS_STRING(s->big), (size_t)blen);
    memcpy(o + s->at + s->hlen + blen, e + s->at + 3, (size_t)(elen - s->at - 3));
    return out;
}

int frame_take_split(const unsigned char *b, Py_ssize_t n, frame_trailer *t, const char **why, frame_split *s) {
    s->env = s->big = NULL;
    s->at = s->hlen = 0;
    s->code = -1;
    *why = NULL;
    if (n < TRAILER) {
        *why = WHY_SHORT;
        return -1;
    }
    uint32_t plen = get32(b + n - 24);  /* read once, as in frame_take */
    uint64_t total = get64(b + n - 8);
    if ((Py_ssize_t)plen > n - TRAILER) {
        *why = WHY_OVERRUN;
        return -1;
    }
    if (plen < SPLIT_MIN) {
        s->env = frame_take(b, n, 0, t, why);
        return s->env ? 0 : -1;
    }
    s->env = PyBytes_FromStringAndSize(NULL, plen);
    if (!s->env) return -1;
    split_cursor c = {b + n - TRAILER - plen, plen, 0, (unsigned char *)PyBytes_AS_STRING(s->env), 0, 0};
    int failed = 0;
    int walked = split_walk(&c, s, &failed) == 0 && c.pos == c.plen;
    if (failed) {
        frame_split_clear(s);
        return -1;
    }
    split_need(&c, (uint64_t)(c.plen - c.pos));  /* the rest, if the walk stopped early */
    unsigned char head[TRAILER_HEAD];
    uint32_t crc = crc32c_copy(head, b + n - TRAILER, TRAILER_HEAD, c.crc);
    if ((uint64_t)crc != total || trailer_read(head, plen, t) < 0) {
        frame_split_clear(s);
        *why = (uint64_t)crc != total ? WHY_SUM : WHY_TRAILER;
        return -1;
    }
    if (_PyBytes_Resize(&s->env, c.epos) < 0) {
        Py_CLEAR(s->big);  /* (_PyBytes_Resize released env) */
        return -1;
    }
    if (s->big && !walked) {  /* not a message the placeholder may stand in: whole again */
        PyObject *whole = frame_split_join(s);
        frame_split_clear(s);
        if (!whole) return -1;
        s->env = whole;
    }
    return 0;
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

/* frame_split(view) -> (env, big or None, at, header): frame_take_split's split of the frame ending the
   view (for the tests: the lanes read their slots with it). ValueError as frame_decode. */
static PyObject *n_frame_split(PyObject *Py_UNUSED(self), PyObject *view) {
    Py_buffer v;
    if (PyObject_GetBuffer(view, &v, PyBUF_SIMPLE) < 0) return NULL;
    frame_trailer t;
    const char *why;
    frame_split s;
    int r = frame_take_split(v.buf, v.len, &t, &why, &s);
    PyBuffer_Release(&v);
    if (r < 0) {
        if (why) PyErr_SetString(PyExc_ValueError, why);
        return NULL;
    }
    PyObject *out = Py_BuildValue("(OOny#)", s.env, s.big ? s.big : Py_None, s.at, (const char *)s.hdr,
                                  (Py_ssize_t)(s.big ? s.hlen : 0));
    frame_split_clear(&s);
    return out;
}

static PyMethodDef frame_functions[] = {
    {"frame_split", n_frame_split, METH_O,
     "frame_split(view) -> (env, big | None, at, header): a frame's payload as the lanes take it (a large item split out)"},
    {"frame_encode", (PyCFunction)(void (*)(void))n_frame_encode, METH_FASTCALL,
     "encode an RPC frame: payload + trailer"},
    {"frame_decode", (PyCFunction)(void (*)(void))n_frame_decode, METH_FASTCALL,
     "validate and copy out the frame ending a buffer"},
    {"checksum", (PyCFunction)(void (*)(void))n_checksum, METH_FASTCALL,
     "checksum(buffer, crc=0): the CRC32C of a buffer, continued from crc"},
    {"checksum_table", (PyCFunction)(void (*)(void))n_checksum_table, METH_FASTCALL,
     "checksum_table(buffer, crc=0): checksum by the portable table, whatever CRC32C_IMPL is"},
    {"copy_checksum", n_copy_checksum, METH_VARARGS, "copy src into dst, returning the checksum of src"},
    {"span_put", (PyCFunction)(void (*)(void))n_span_put, METH_FASTCALL,
     "span_put(segment, offset, seq, data) -> crc32c of the span written (rpc/bulk.py)"},
    {"span_take", (PyCFunction)(void (*)(void))n_span_take, METH_FASTCALL,
     "span_take(segment, offset, length, seq, crc) -> the span's data copied out, or None if it fails its check"},
    {"span_view", (PyCFunction)(void (*)(void))n_span_view, METH_FASTCALL,
     "span_view(segment, offset, length, seq) -> the span's data lent read-only in place, or None (another header)"},
    {"bulk_guard", n_bulk_guard, METH_VARARGS,
     "bulk_guard(pack, threshold, exception): pack, raising exception for a message with a large payload"},
    {NULL, NULL, 0, NULL},
};

int native_add_frame(PyObject *module) {
    const char *impl = crc32c_init();  /* the CRC32C implementation, chosen once */
    if (PyModule_AddStringConstant(module, "CRC32C_IMPL", impl) < 0 ||
        PyModule_AddIntConstant(module, "SPLIT_MIN", SPLIT_MIN) < 0 ||
        PyModule_AddIntConstant(module, "SPLIT_CODE", SPLIT_CODE) < 0)
        return -1;
    if (PyType_Ready(&SpanViewType) < 0) return -1;  /* (made by span_view only: not in the module) */
    return native_add(module, frame_functions, NULL);
}
