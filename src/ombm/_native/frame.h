/*
 * The RPC frame (transport/wire.py owns its format; paper §4): a payload followed by a 48-byte
 * trailer, little-endian:
 *   0 connection id u64 | 8 message id u64 | 16 ack u64 | 24 payload length u32 | 28 credit u32 |
 *   32 fragment index u16 | 34 fragment count u16 | 36 kind u8 | 37 flags u8 | 38 magic u16 |
 *   40 checksum u64: the CRC32C (crc32c.h) of payload + trailer[0:40], its high 32 bits zero.
 * frame.c writes a frame (frame_put, frame_bytes) and holds THE frame check (frame_take) that
 * every reader uses: the lanes and frame_decode.
 */
#ifndef OMBM_FRAME_H
#define OMBM_FRAME_H

#include "native.h"  /* first: Python.h sets the feature macros */
#include "crc32c.h"

#define TRAILER 48            /* wire.TRAILER_SIZE */
#define TRAILER_HEAD 40       /* the trailer before its checksum */
#define FRAME_MAGIC 0x4F02    /* wire.MAGIC */
#define KIND_CALL 1           /* wire.Kind */
#define KIND_REPLY 3
#define KIND_ERROR_REPLY 4

/* A trailer's fields, read from (or to be written to) a frame. */
typedef struct {
    uint64_t connection_id, message_id, ack;
    uint32_t payload_len, credit;
    uint16_t frag_index, frag_count;
    uint8_t kind;
} frame_trailer;

/* Write payload (t->payload_len bytes) + trailer at d, the checksum last. */
void frame_put(unsigned char *d, const void *payload, const frame_trailer *t);

/* The same as a new bytes object. */
PyObject *frame_bytes(const void *payload, const frame_trailer *t);

/* THE frame check: the frame that ends at b + n (memory another process may be writing) is
   copied once into private memory, its checksum folded into the copy (paper §4), then checked.
   Returns the payload, a new bytes (or bytearray if as_bytearray) object, with *t read from the
   private copy; or NULL with *why saying what is wrong and no exception set; or NULL with an
   exception (out of memory; *why NULL). */
PyObject *frame_take(const unsigned char *b, Py_ssize_t n, int as_bytearray, frame_trailer *t, const char **why);

/* A large inline payload (issue 13 item 4: one copy out): a frame whose payload is msgpack with a
   bin or ext of SPLIT_MIN bytes or more is copied out by frame_take_split in that same one pass
   (checksum fused), the first such body straight into its own bytes object (`big`), the rest of
   the payload into `env` (private) with the item replaced by a placeholder the wire never carries:
   ext type SPLIT_CODE holding one zero byte (marshal_unpack_split, lane.c, gives back `big` for a
   bin, or what the ext hook makes of `big` for an ext: a numpy array views it). big NULL: env is
   the whole payload. */
#define SPLIT_MIN 8192
#define SPLIT_CODE 15         /* an ext type code of ombm's (0-15) that rpc/marshal.py never uses */
typedef struct {
    PyObject *env, *big;      /* new references (big may be NULL) */
    Py_ssize_t at;            /* where the placeholder (3 bytes) is in env */
    int code;                 /* the ext type code of big, -1 for a bin */
    unsigned char hdr[6];     /* the item's header, as it came */
    int hlen;
} frame_split;

/* THE frame check, as frame_take (same *why, same checks, every field from the private copy),
   splitting out a large bin or ext as described above; a payload shorter than SPLIT_MIN, or not walkable
   msgpack (malformed, trailing bytes, a placeholder code of its own), is never split. 0 with *s
   set, or -1 (*why says what is wrong, no exception; or *why NULL and an exception). */
int frame_take_split(const unsigned char *b, Py_ssize_t n, frame_trailer *t, const char **why, frame_split *s);

/* The whole payload of a split (a new bytes: env itself if nothing is split), or NULL with an
   exception. */
PyObject *frame_split_join(const frame_split *s);
void frame_split_clear(frame_split *s);

/* The size of a bytes-like object (bytes, bytearray, memoryview, a numpy array: anything with a
   C-contiguous buffer, but str) or -1 if it is none; no exception either way. */
Py_ssize_t frame_buffer_size(PyObject *o);

/* frame_decode's tuple for Python: (kinds[t->kind], connection id, message id, frag index,
   frag count, ack, payload, credit); a new reference, or NULL with an exception. */
PyObject *frame_fields(PyObject *kind, const frame_trailer *t, PyObject *payload);

/* frame_take, then the kind looked up in `kinds` (kind byte -> object, None: invalid):
   frame_fields' tuple, or NULL with ValueError saying what is wrong (or another exception). */
PyObject *frame_decode_fields(const unsigned char *b, Py_ssize_t n, PyObject *kinds);

#endif
