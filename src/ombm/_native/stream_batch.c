/*
 * Small messages in batches (paper §4 and §3.2: many messages per signal and per wake-up; issue
 * 13, item 5): the per-message work of Stream.send_many/recv_many (and of send/recv of one small
 * message) and of RawChannel.recv_many in one native call per run. channels/stream.py and
 * channels/raw.py own the layouts and every rule; the functions here only do, for a run of the
 * common case, what their Python paths do for one message, and stop at the first message they do
 * not take, which the Python path then handles.
 *
 * Stream (a run of one-fragment bytes messages; Stream._emit, and Stream._take with
 * StreamReceiver.accept's checks): a DATA frame (transport/stream_protocol.py, wire.py's trailer)
 * ends at the end of its slot, fragment s at first + (s % slots + 1) * slot_size; its checksum is
 * the CRC32C of the payload continued over trailer[0:40] (seal), stored last, with a release store.
 * stream_put_many writes into the writer's own mapping, without signals: the caller signals the
 * last fragment of the burst (a reader looks from the fragment it expects next on), unless the
 * reader says it is reading (stream_reader_reading). Fault injection (faults.h)
 * flips a bit of a frame it wrote as Writer.write would. stream_take_many reads memory the writer
 * may be writing: it reads the checksum (acquire) and the trailer head into private memory,
 * copies the payload out once with its checksum folded into the copy, and takes the message only
 * if that private trailer seals that private copy and says exactly what the reader expects there;
 * every field it uses comes from the private copy.
 *
 * RawChannel (RawChannel._take): raw_take_many reads each signalled unit between two reads of its
 * generations (acquire), as the Python reader does; raw_drain takes the reader's signals from its
 * FIFO without a Python handler call each.
 *
 * Batches are bounded by the caller's limit; a copy of 64 KiB or more runs with the GIL released.
 */
#include "faults.h"
#include "fifo.h"
#include "frame.h"
#include "writer.h"

#define DATA_KIND 6          /* wire.Kind.DATA */
#define CONTENT_BYTES 0      /* stream_protocol.BYTES */
#define GIL_COPY 65536       /* copies at least this long run with the GIL released (as frame.c's) */

static inline uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t rd16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }

static uint32_t copy_sum(unsigned char *dst, const unsigned char *src, size_t n) {
    if (n < GIL_COPY) return crc32c_copy(dst, src, n, 0);
    uint32_t crc;
    Py_BEGIN_ALLOW_THREADS
    crc = crc32c_copy(dst, src, n, 0);
    Py_END_ALLOW_THREADS
    return crc;
}

static void copy_plain(unsigned char *dst, const unsigned char *src, size_t n) {
    if (n < GIL_COPY) { memcpy(dst, src, n); return; }
    Py_BEGIN_ALLOW_THREADS
    memcpy(dst, src, n);
    Py_END_ALLOW_THREADS
}

/* The stream's geometry, checked against the mapping once per call. */
typedef struct {
    Py_ssize_t first, slot_size, slots, max_payload;
} geometry;

static int check_geometry(const geometry *g, const void *buf, Py_ssize_t len) {
    if (g->first < 0 || g->slots < 1 || g->max_payload < 0 || g->slot_size < g->max_payload + TRAILER ||
        g->slot_size > (len - g->first) / g->slots || ((uintptr_t)buf + (uintptr_t)g->first) % 8 ||
        g->slot_size % 8) {  /* the checksum words are 8-byte aligned: they are loaded and stored atomically */
        PyErr_SetString(PyExc_ValueError, "stream batch: the slots do not fit the mapping");
        return -1;
    }
    return 0;
}

/* args[1:7] of the stream functions (first, slot_size, slots, max_payload, connection_id, and a
   fragment number) into *g, *conn and *seq; the caller checks PyErr_Occurred, then the geometry
   (check_geometry) against the mapping. */
static void stream_args(PyObject *const *args, geometry *g, uint64_t *conn, uint64_t *seq) {
    g->first = PyLong_AsSsize_t(args[1]);
    g->slot_size = PyLong_AsSsize_t(args[2]);
    g->slots = PyLong_AsSsize_t(args[3]);
    g->max_payload = PyLong_AsSsize_t(args[4]);
    *conn = PyLong_AsUnsignedLongLong(args[5]);
    *seq = PyLong_AsUnsignedLongLong(args[6]);
}

/* The record of the one-fragment message m (n bytes) written as fragment seq with checksum sum, as
   Stream's _Record: (seq, 0, 1, length, BYTES, message, length, frame checksum). */
static PyObject *one_fragment_record(uint64_t seq, PyObject *m, Py_ssize_t n, uint64_t sum) {
    return Py_BuildValue("(KiinnOnK)", (unsigned long long)seq, 0, 1, n, (Py_ssize_t)CONTENT_BYTES, m, n,
                         (unsigned long long)sum);
}

static inline unsigned char *slot_end(unsigned char *base, const geometry *g, uint64_t seq) {
    return base + g->first + ((Py_ssize_t)(seq % (uint64_t)g->slots) + 1) * g->slot_size;
}

/* Write the bytes message m as the one-fragment DATA frame seq, all but its checksum (*sum): the
   payload copied with its CRC folded in, the trailer's head written and the seal continued over it.
   Returns where the payload starts (the checksum word ends the frame, n + TRAILER bytes on). */
static unsigned char *put_frame(unsigned char *base, const geometry *g, uint64_t conn, uint64_t seq, PyObject *m,
                                uint64_t *sum) {
    Py_ssize_t n = PyBytes_GET_SIZE(m);
    unsigned char *end = slot_end(base, g, seq), *t = end - TRAILER, *at = t - n;
    uint32_t crc = copy_sum(at, (const unsigned char *)PyBytes_AS_STRING(m), (size_t)n);
    unsigned char head[TRAILER_HEAD];
    uint64_t total = (uint64_t)n;
    uint32_t plen = (uint32_t)n, content = CONTENT_BYTES;
    uint16_t index = 0, frags = 1, magic = FRAME_MAGIC;
    memcpy(head, &conn, 8); memcpy(head + 8, &seq, 8); memcpy(head + 16, &total, 8);
    memcpy(head + 24, &plen, 4); memcpy(head + 28, &content, 4);
    memcpy(head + 32, &index, 2); memcpy(head + 34, &frags, 2);
    head[36] = DATA_KIND; head[37] = 0; memcpy(head + 38, &magic, 2);
    *sum = crc32c_copy(t, head, TRAILER_HEAD, crc);  /* the head written, the seal continued */
    return at;
}

/* stream_put_many(wbuf, first, slot_size, slots, max_payload, connection_id, seq, limit, messages,
   start, records) -> (count, bytes): write messages[start:] as fragments seq, seq + 1,
   ... while each is a bytes object of at most max_payload bytes and its fragment is below limit;
   append each one's record (seq, 0, 1, length, BYTES, message, length, frame checksum) to
   `records` (Stream's _Record). No signal. */
static PyObject *n_stream_put_many(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11 || !PyList_Check(args[8]) || !PyList_Check(args[10])) {
        PyErr_SetString(PyExc_TypeError, "stream_put_many(wbuf, first, slot_size, slots, max_payload, "
                                          "connection_id, seq, limit, messages: list, start, records: list)");
        return NULL;
    }
    geometry g;
    uint64_t conn, seq;
    stream_args(args, &g, &conn, &seq);
    uint64_t limit = PyLong_AsUnsignedLongLong(args[7]);
    Py_ssize_t i = PyLong_AsSsize_t(args[9]);
    if (PyErr_Occurred()) return NULL;
    PyObject *messages = args[8], *records = args[10];
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_WRITABLE) < 0) return NULL;
    if (check_geometry(&g, v.buf, v.len) < 0) { PyBuffer_Release(&v); return NULL; }
    Py_ssize_t count = 0, bytes = 0;
    _Atomic uint64_t *held = NULL;  /* the checksum word of the last frame written, not stored yet */
    uint64_t held_sum = 0;
    for (; i >= 0 && i < PyList_GET_SIZE(messages) && seq < limit; i++, seq++, count++) {
        PyObject *m = PyList_GET_ITEM(messages, i);  /* bytes: immutable, and held while the GIL is released */
        if (!PyBytes_CheckExact(m) || PyBytes_GET_SIZE(m) > g.max_payload) break;
        Py_INCREF(m);
        Py_ssize_t n = PyBytes_GET_SIZE(m);
        uint64_t sum;
        unsigned char *at = put_frame(v.buf, &g, conn, seq, m, &sum);
        PyObject *rec = one_fragment_record(seq, m, n, sum);
        Py_DECREF(m);
        if (!rec || PyList_Append(records, rec) < 0) {  /* out of memory: this frame stays unsealed */
            Py_XDECREF(rec);
            goto fail;
        }
        Py_DECREF(rec);
        /* the checksum stored last: a reader that sees it sees the frame it seals; the previous
           frame's now (it was not the last), this one's at the next frame or after the loop */
        if (held) atomic_store_explicit(held, held_sum, memory_order_release);
        held = (_Atomic uint64_t *)(void *)(at + n + TRAILER_HEAD);
        held_sum = sum;
        if (FAULTS_CORRUPT) fault_corrupt(at, n + TRAILER);  /* as Writer.write does to a message it wrote */
        bytes += n;
    }
    if (held) atomic_store_explicit(held, held_sum, memory_order_release);
    PyBuffer_Release(&v);
    return Py_BuildValue("(nn)", count, bytes);
fail:  /* the frame being written stays unsealed; those recorded before it are sealed: the caller
          counts them sent (and the repair timer signals them) */
    if (held) atomic_store_explicit(held, held_sum, memory_order_release);
    PyBuffer_Release(&v);
    return NULL;
}

/* stream_take_many(buf, first, slot_size, slots, max_payload, connection_id, expected, limit)
   -> (messages, bytes): the single-fragment bytes messages there in order from fragment
   `expected` on, at most `limit`, each a new bytearray; stops at the first fragment that is not
   one, intact, exactly where it must be. */
static PyObject *n_stream_take_many(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "stream_take_many(buf, first, slot_size, slots, max_payload, "
                                          "connection_id, expected, limit)");
        return NULL;
    }
    geometry g;
    uint64_t conn, seq;
    stream_args(args, &g, &conn, &seq);
    Py_ssize_t limit = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0) return NULL;
    if (check_geometry(&g, v.buf, v.len) < 0) { PyBuffer_Release(&v); return NULL; }
    PyObject *out = PyList_New(0);
    if (!out) { PyBuffer_Release(&v); return NULL; }
    Py_ssize_t bytes = 0;
    for (Py_ssize_t k = 0; k < limit; k++, seq++) {
        const unsigned char *end = slot_end(v.buf, &g, seq);
        unsigned char t[TRAILER];
        /* the private trailer: the checksum first (acquire: pairs with the writer's release), then
           the head; a torn pair fails the seal */
        uint64_t sum = atomic_load_explicit((_Atomic uint64_t *)(void *)(end - 8), memory_order_acquire);
        memcpy(t, end - TRAILER, TRAILER_HEAD);
        uint32_t plen = rd32(t + 24);
        if (rd64(t) != conn || rd64(t + 8) != seq || rd64(t + 16) != plen || plen > (uint64_t)g.max_payload ||
            rd32(t + 28) != CONTENT_BYTES || rd16(t + 32) != 0 || rd16(t + 34) != 1 || t[36] != DATA_KIND ||
            t[37] != 0 || rd16(t + 38) != FRAME_MAGIC || (sum >> 32))
            break;  /* not there yet, or not a single-fragment bytes message: the Python path looks */
        PyObject *msg = PyByteArray_FromStringAndSize(NULL, plen);
        if (!msg) goto fail;
        uint32_t crc = copy_sum((unsigned char *)PyByteArray_AS_STRING(msg), end - TRAILER - plen, plen);
        if (crc32c_copy(NULL, t, TRAILER_HEAD, crc) != (uint32_t)sum) {
            Py_DECREF(msg);
            break;  /* torn or corrupt: the Python path counts it and looks again */
        }
        if (PyList_Append(out, msg) < 0) { Py_DECREF(msg); goto fail; }
        Py_DECREF(msg);
        bytes += plen;
    }
    PyBuffer_Release(&v);
    PyObject *r = Py_BuildValue("(On)", out, bytes);
    Py_DECREF(out);
    return r;
fail:
    PyBuffer_Release(&v);
    Py_DECREF(out);
    return NULL;
}

static uint32_t sum_only(const unsigned char *src, size_t n) {
    if (n < GIL_COPY) return crc32c_copy(NULL, src, n, 0);
    uint32_t crc;
    Py_BEGIN_ALLOW_THREADS
    crc = crc32c_copy(NULL, src, n, 0);
    Py_END_ALLOW_THREADS
    return crc;
}

/* The next unit of `units`: a list read from index *used on, or a deque popped from the left (the
   reader's own queue of signalled units). 1 and *unit; 0 when there is none; -1 with an exception. */
static PyObject *popleft_name = NULL;  /* "popleft", interned once */

static int next_unit(PyObject *units, int popping, Py_ssize_t *used, Py_ssize_t *unit) {
    PyObject *u;
    if (popping) {
        if (PyObject_Length(units) <= 0) return PyErr_Occurred() ? -1 : 0;
        u = PyObject_CallMethodNoArgs(units, popleft_name);
        if (!u) return -1;
    } else {
        if (*used >= PyList_GET_SIZE(units)) return 0;
        u = Py_NewRef(PyList_GET_ITEM(units, *used));
    }
    (*used)++;
    *unit = PyLong_AsSsize_t(u);
    Py_DECREF(u);
    return *unit == -1 && PyErr_Occurred() ? -1 : 1;
}

/* raw_take_many(buf, first, slot_size, max_payload, checksummed, ordered, units, last_seq, last_gen,
   published_offset, horizon, limit, frame_type[, view]) -> (frames, used, last_seq, received, missed,
   torn, stale): RawChannel._take for each signalled unit of `units` in turn (channels/raw.py owns
   the layout and the rules), until `limit` frames were taken: a unit whose generations agree and
   whose frame is new is copied out (checksummed in the same pass if the channel carries checksums)
   and delivered as frame_type(unit, seq, generation, data: bytes) if its generations still agree
   after the copy (and its checksum matches). With `view`, nothing is copied: data is buf[start:
   start + length] (buf a memoryview of the mapping), checksummed in place. `units` is a list, or a
   deque the units looked at are popped from; `last_gen` (a list, one int a unit) is updated in
   place; `used` is how many units were looked at; the counts are this call's. */
static PyObject *n_raw_take_many(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 13 || nargs > 14 || !PyList_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError, "raw_take_many(buf, first, slot_size, max_payload, checksummed, ordered, "
                                          "units: list or deque, last_seq, last_gen: list, published_offset, horizon, "
                                          "limit, frame_type, view=False)");
        return NULL;
    }
    if (!popleft_name && !(popleft_name = PyUnicode_InternFromString("popleft"))) return NULL;
    int popping = !PyList_Check(args[6]);
    if (popping && !PyObject_HasAttr(args[6], popleft_name)) {
        PyErr_SetString(PyExc_TypeError, "raw_take_many: units must be a list or a deque");
        return NULL;
    }
    int view = nargs == 14 ? PyObject_IsTrue(args[13]) : 0;
    if (view < 0) return NULL;
    if (view && !PyMemoryView_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "raw_take_many: a view is a slice of a memoryview of the mapping");
        return NULL;
    }
    Py_ssize_t first = PyLong_AsSsize_t(args[1]), slot_size = PyLong_AsSsize_t(args[2]);
    Py_ssize_t max_payload = PyLong_AsSsize_t(args[3]);
    int checksummed = PyObject_IsTrue(args[4]), ordered = PyObject_IsTrue(args[5]);
    PyObject *units = args[6], *last_gen = args[8], *frame_type = args[12];
    uint64_t last_seq = PyLong_AsUnsignedLongLong(args[7]);
    Py_ssize_t published_at = PyLong_AsSsize_t(args[9]);
    uint64_t horizon = PyLong_AsUnsignedLongLong(args[10]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[11]);
    if (PyErr_Occurred() || checksummed < 0 || ordered < 0) return NULL;
    Py_ssize_t slots = PyList_GET_SIZE(last_gen);
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0) return NULL;
    if (first < 0 || slot_size < max_payload + 32 || max_payload < 0 || slots < 1 ||
        slot_size > (v.len - first) / slots || published_at < 0 || published_at > v.len - 8 ||
        ((uintptr_t)v.buf + (uintptr_t)published_at) % 8 || ((uintptr_t)v.buf + (uintptr_t)first) % 8 || slot_size % 8) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "raw_take_many: the units do not fit the mapping");
        return NULL;
    }
    const unsigned char *base = v.buf;
    PyObject *frames = PyList_New(0);
    if (!frames) { PyBuffer_Release(&v); return NULL; }
    unsigned long long received = 0, missed = 0, torn = 0, stale = 0;
    Py_ssize_t used = 0, unit = 0;
    /* the lists' sizes are read again at each use: a copy that releases the GIL lets other threads run */
    while (PyList_GET_SIZE(frames) < limit) {
        int got = next_unit(units, popping, &used, &unit);
        if (got < 0) goto fail;
        if (!got) break;
        if (unit < 0 || unit >= slots || unit >= PyList_GET_SIZE(last_gen))
            continue;  /* not a unit of this channel: the handler never makes one */
        const unsigned char *end = base + first + (unit + 1) * slot_size;
        _Atomic uint64_t *gen_end = (_Atomic uint64_t *)(void *)(end - 8);
        _Atomic uint64_t *gen_begin = (_Atomic uint64_t *)(void *)(end - 32);
        uint64_t gen = atomic_load_explicit(gen_end, memory_order_acquire);
        if (gen == 0) continue;  /* never written */
        if (atomic_load_explicit(gen_begin, memory_order_acquire) != gen) { torn++; continue; }
        uint64_t seq = rd64(end - 24);
        uint32_t length = rd32(end - 16), crc = rd32(end - 12);
        if (length > (uint64_t)max_payload) { torn++; continue; }
        uint64_t known = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(last_gen, unit));
        if (known == (uint64_t)-1 && PyErr_Occurred()) goto fail;
        if (ordered ? seq <= last_seq : gen <= known) { stale++; continue; }
        int more = popping ? PyObject_Length(units) > 0 : used < PyList_GET_SIZE(units);
        if (ordered && more) {  /* at risk, and a newer frame is signalled anyway */
            uint64_t published = atomic_load_explicit((_Atomic uint64_t *)(void *)(base + published_at),
                                                      memory_order_acquire);
            if (published - seq >= horizon && published >= seq) continue;
        }
        PyObject *data;
        uint32_t sum = 0;
        if (view) {  /* zero copy: a slice of the caller's view of the mapping */
            Py_ssize_t at = (Py_ssize_t)(end - slot_size - base);
            data = PySequence_GetSlice(args[0], at, at + (Py_ssize_t)length);
            if (!data) goto fail;
            if (checksummed) sum = sum_only(end - slot_size, length);
        } else {
            data = PyBytes_FromStringAndSize(NULL, length);
            if (!data) goto fail;
            unsigned char *d = (unsigned char *)PyBytes_AS_STRING(data);
            if (checksummed) sum = copy_sum(d, end - slot_size, length);
            else copy_plain(d, end - slot_size, length);
        }
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(gen_begin, memory_order_acquire) != gen ||
            atomic_load_explicit(gen_end, memory_order_acquire) != gen || (checksummed && sum != crc)) {
            Py_DECREF(data);
            torn++;
            continue;
        }
        missed += ordered ? seq - last_seq - 1 : gen - known - 1;
        if (ordered) last_seq = seq;
        PyObject *g = PyLong_FromUnsignedLongLong(gen);
        if (!g || PyList_SetItem(last_gen, unit, g) < 0) { Py_DECREF(data); goto fail; }  /* steals g */
        received++;
        PyObject *fargs[4] = {PyLong_FromSsize_t(unit), PyLong_FromUnsignedLongLong(seq), PyLong_FromUnsignedLongLong(gen),
                              data};
        PyObject *frame = NULL;
        if (fargs[0] && fargs[1] && fargs[2]) frame = PyObject_Vectorcall(frame_type, fargs, 4, NULL);
        for (int k = 0; k < 4; k++) Py_XDECREF(fargs[k]);
        if (!frame) goto fail;
        int rc = PyList_Append(frames, frame);
        Py_DECREF(frame);
        if (rc < 0) goto fail;
    }
    PyBuffer_Release(&v);
    PyObject *r = Py_BuildValue("(OnKKKKK)", frames, used, (unsigned long long)last_seq, received, missed, torn, stale);
    Py_DECREF(frames);
    return r;
fail:
    PyBuffer_Release(&v);
    Py_DECREF(frames);
    return NULL;
}

/* raw_drain(fifo, segment_id, lo, hi, unit_size, limit, units: list) -> (popped, foreign): a raw
   reader's own signal FIFO (its one handler watches [lo, hi) of segment_id) drained without a Python
   call per signal: pops up to `limit` entries, appends the unit of each one of its own ((offset - lo)
   // unit_size) to `units`, and counts the others that are not nudges (segment 0): a peer's pushes
   of anything else, which no handler takes (RawChannel counts them unhandled). */
static PyObject *n_raw_drain(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyList_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "raw_drain(fifo, segment_id, lo, hi, unit_size, limit, units: list)");
        return NULL;
    }
    FifoMap *m = as_fifo(args[0]);
    if (!m) return NULL;
    uint64_t seg_id = PyLong_AsUnsignedLongLong(args[1]);
    Py_ssize_t lo = PyLong_AsSsize_t(args[2]), hi = PyLong_AsSsize_t(args[3]), unit = PyLong_AsSsize_t(args[4]);
    Py_ssize_t limit = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred()) return NULL;
    if (lo < 0 || hi < lo || unit < 1) {
        PyErr_SetString(PyExc_ValueError, "raw_drain: bad range or unit size");
        return NULL;
    }
    PyObject *units = args[6];
    Py_ssize_t popped = 0, foreign = 0;
    uint64_t seg = 0, off = 0;
    while (popped < limit && fifo_take(m, &seg, &off)) {
        popped++;
        if (seg == seg_id && off >= (uint64_t)lo && off < (uint64_t)hi) {
            PyObject *u = PyLong_FromSsize_t(((Py_ssize_t)off - lo) / unit);
            if (!u || PyList_Append(units, u) < 0) { Py_XDECREF(u); return NULL; }  /* (the rest stays queued) */
            Py_DECREF(u);
        } else if (seg != 0) {
            foreign++;
        }
    }
    return Py_BuildValue("(nn)", popped, foreign);
}

/* The reader's reading word (Stream's credit channel, CR_READING; issue 13, item 5): nonzero while
   the reader is in a receive and looks at the slots again before it waits, so a writer need not
   signal a fragment. A Dekker handshake, as Drepper's wake protocol orders each side: the writer
   stores a frame's checksum, then (full fence) loads the word, and signals unless it is set; the
   reader clears the word, then (full fence) looks at the slot it expects. Of a frame written and a
   reader going to wait, at least one sees the other: no lost wake-up. A reader on another host
   (its flags say) is always signalled: its bridge sends a fragment on its signal. A forged word only
   makes the writer leave signals out: the reader, which looks once a tick while it waits, finds it
   (Stream._check_words). */
#define CR_FLAGS 36
#define CR_READING 64
#define READER_REMOTE 1u

/* The writer, after it stored a frame's checksum: whether a reader on this host says it is reading. */
static int reader_reading(uintptr_t a) {
    atomic_thread_fence(memory_order_seq_cst);  /* the checksum stored before, the words loaded after */
    if (atomic_load_explicit((_Atomic uint32_t *)(a + CR_FLAGS), memory_order_seq_cst) & READER_REMOTE) return 0;
    return atomic_load_explicit((_Atomic uint64_t *)(a + CR_READING), memory_order_seq_cst) != 0;
}

/* stream_reader_reading(credit_base) -> bool */
static PyObject *n_stream_reader_reading(PyObject *Py_UNUSED(self), PyObject *arg) {
    unsigned long long a = PyLong_AsUnsignedLongLong(arg);
    if (a == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (!a || (a & 63)) {
        PyErr_SetString(PyExc_ValueError, "stream_reader_reading: not a credit channel's address");
        return NULL;
    }
    return PyBool_FromLong(reader_reading((uintptr_t)a));
}

/* stream_put_one(wbuf, first, slot_size, slots, max_payload, connection_id, seq, limit, message,
   credit_base, writer) -> record or None: Stream.send's common case in one call. If `message` is a
   bytes object of at most max_payload bytes and seq is below limit, write it as fragment seq (as
   stream_put_many does, its checksum stored last) and signal its slot through `writer` (the data
   channel's Writer) unless the reader says it is reading; return the fragment's record
   (seq, 0, 1, length, BYTES, message, length, frame checksum), which the caller hands the
   protocol. Else None: nothing written. */
static PyObject *n_stream_put_one(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11 || !Py_IS_TYPE(args[10], &WriterType)) {
        PyErr_SetString(PyExc_TypeError, "stream_put_one(wbuf, first, slot_size, slots, max_payload, "
                                          "connection_id, seq, limit, message, credit_base, writer: Writer)");
        return NULL;
    }
    geometry g;
    uint64_t conn, seq;
    stream_args(args, &g, &conn, &seq);
    uint64_t limit = PyLong_AsUnsignedLongLong(args[7]);
    unsigned long long credit = PyLong_AsUnsignedLongLong(args[9]);
    if (PyErr_Occurred()) return NULL;
    if (!credit || credit % 64) {
        PyErr_SetString(PyExc_ValueError, "stream_put_one: not a credit channel's address");
        return NULL;
    }
    PyObject *m = args[8];
    if (!PyBytes_CheckExact(m) || PyBytes_GET_SIZE(m) > g.max_payload || seq >= limit) Py_RETURN_NONE;
    Writer *w = (Writer *)args[10];
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_WRITABLE) < 0) return NULL;
    if (check_geometry(&g, v.buf, v.len) < 0) { PyBuffer_Release(&v); return NULL; }
    Py_ssize_t n = PyBytes_GET_SIZE(m);
    Py_ssize_t slot = g.first + (Py_ssize_t)(seq % (uint64_t)g.slots) * g.slot_size;  /* the slot's offset */
    if (!w->base || w->base != (unsigned char *)v.buf || w->unit <= 0 || slot % w->unit ||
        slot + g.slot_size > w->size) {
        PyBuffer_Release(&v);
        PyErr_SetString(PyExc_ValueError, "stream_put_one: the writer is not this mapping's, or its units are not the slots");
        return NULL;
    }
    uint64_t sum;
    Py_INCREF(m);  /* bytes: immutable, and held while a long copy releases the GIL */
    unsigned char *at = put_frame(v.buf, &g, conn, seq, m, &sum);
    PyObject *rec = one_fragment_record(seq, m, n, sum);
    Py_DECREF(m);
    if (!rec) { PyBuffer_Release(&v); return NULL; }  /* out of memory: the frame stays unsealed, not sent */
    atomic_store_explicit((_Atomic uint64_t *)(void *)(at + n + TRAILER_HEAD), sum, memory_order_release);
    if (FAULTS_CORRUPT) fault_corrupt(at, n + TRAILER);  /* as Writer.write does to a message it wrote */
    PyBuffer_Release(&v);
    if (!reader_reading((uintptr_t)credit) && writer_deliver(w, slot) < 0) {
        Py_DECREF(rec);  /* written and sealed, not signalled; not counted sent: the error is raised */
        return NULL;
    }
    return rec;
}

/* stream_reader_idle(credit_base): the reader, before its last look and a wait. */
static PyObject *n_stream_reader_idle(PyObject *Py_UNUSED(self), PyObject *arg) {
    unsigned long long a = PyLong_AsUnsignedLongLong(arg);
    if (a == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (!a || (a & 63)) {
        PyErr_SetString(PyExc_ValueError, "stream_reader_idle: not a credit channel's address");
        return NULL;
    }
    atomic_store_explicit((_Atomic uint64_t *)(uintptr_t)(a + CR_READING), 0, memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);  /* the word cleared before the slots are looked at */
    Py_RETURN_NONE;
}

static PyMethodDef stream_batch_functions[] = {
    {"stream_put_many", (PyCFunction)(void (*)(void))n_stream_put_many, METH_FASTCALL,
     "write a run of single-fragment bytes messages into a stream's slots, unsignalled: (count, bytes)"},
    {"stream_put_one", (PyCFunction)(void (*)(void))n_stream_put_one, METH_FASTCALL,
     "write one single-fragment bytes message into its slot, signalled unless the reader is reading: its record"},
    {"stream_take_many", (PyCFunction)(void (*)(void))n_stream_take_many, METH_FASTCALL,
     "copy out the run of single-fragment bytes messages there from a fragment on: (list of bytearray, bytes)"},
    {"stream_reader_reading", n_stream_reader_reading, METH_O,
     "writer: after a frame's checksum was stored, whether the reader's reading word is set (full fence first)"},
    {"stream_reader_idle", n_stream_reader_idle, METH_O,
     "reader: clear the reading word before the last look and a wait (full fence after)"},
    {"raw_drain", (PyCFunction)(void (*)(void))n_raw_drain, METH_FASTCALL,
     "a raw reader's signal FIFO drained: the units of its own signals appended, (popped, foreign)"},
    {"raw_take_many", (PyCFunction)(void (*)(void))n_raw_take_many, METH_FASTCALL,
     "a raw reader's take of the new good frames of a list of signalled units, copied out: (frames, used, ...)"},
    {NULL, NULL, 0, NULL},
};

int native_add_stream_batch(PyObject *module) { return native_add(module, stream_batch_functions, NULL); }
