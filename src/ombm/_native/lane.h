/*
 * What the RPC lanes share (call_lane.c, pipe_lane.c, request_intake.c; paper §4): the statuses of what
 * they return and the typed records that carry them, and the marshalling they do with the
 * msgpack objects Python hands them (rpc/marshal.py's format), and the client lanes' one check of
 * a reply frame. lane.c implements them.
 */
#ifndef OMBM_LANE_H
#define OMBM_LANE_H

#include "native.h"
#include "frame.h"
#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_T_ULONGLONG T_ULONGLONG
#define Py_T_DOUBLE T_DOUBLE
#define Py_T_BOOL T_BOOL
#define Py_READONLY READONLY
#endif

/* CallResult.status (call_lane.c), in the order Python tests them: <= LANE_ERROR_REPLY is a
   reply, >= LANE_UNSENT sent nothing */
#define LANE_VALUE 0       /* the reply's result, unmarshalled */
#define LANE_REPLY 1       /* a reply the lane did not unmarshal: its payload */
#define LANE_ERROR_REPLY 2 /* an error reply: its payload */
#define LANE_OTHER 3       /* another signal, or a frame the lane does not take: the signal */
#define LANE_TIMEOUT 4     /* no signal within the patience */
#define LANE_STALLED 5     /* the FIFO's head cell was claimed and never published (fifo_skip_stalled) */
#define LANE_UNSENT 6      /* the call does not marshal or fit one frame: nothing sent */
#define LANE_NOT_LENT 7    /* the lane holds no call ids: nothing sent */

/* ServeResult.status (request_intake.c): what Python must see next, in the order Python tests
   them: <= SERVE_LEARN a signal came */
#define SERVE_REQUEST 0    /* a request frame the lane did not serve: connection, fields, handback, executed */
#define SERVE_SIGNAL 1     /* any other signal: segment_id, offset */
#define SERVE_LEARN 2      /* the lane served a request whose wait outlasted learn_ns: the spin learns */
#define SERVE_TIMEOUT 3    /* no signal within timeout_s */
#define SERVE_STALLED 4    /* the FIFO's head cell was claimed and never published (fifo_skip_stalled) */

/* ---- marshalling: msgpack through a lane's own Packer and msgpack.unpackb */
typedef struct {
    PyObject *pack, *reset;   /* a msgpack Packer's pack and reset, the lane's own */
    PyObject *unpack;         /* msgpack.unpackb */
    PyObject *ext_hook;       /* rpc/marshal.py's ext hook */
    PyObject *kwnames;        /* ("ext_hook", "strict_map_key") */
} Marshal;

/* Take the packer's pack and reset and keep unpack and ext_hook: 0, or -1 with an exception. */
int marshal_init(Marshal *m, PyObject *packer, PyObject *unpack, PyObject *ext_hook);
int marshal_traverse(Marshal *m, visitproc visit, void *arg);
void marshal_clear(Marshal *m);

/* pack(obj): the bytes, or NULL. A failure that is an Exception (obj does not marshal) leaves no
   exception set and resets the packer (never half a message in its buffer); anything else
   (e.g. KeyboardInterrupt) is left set. */
PyObject *marshal_pack(Marshal *m, PyObject *obj);

/* unpackb(data, ext_hook=..., strict_map_key=False): the object, or NULL; an Exception (data
   does not unmarshal: Python's own decoding says why) leaves no exception set, anything else does. */
PyObject *marshal_unpack(Marshal *m, PyObject *data);

/* marshal_unpack of a split payload (frame.h: frame_take_split): the large bin comes back as the
   bytes object it was copied into (no second copy), a large ext as the ext hook makes it from those
   bytes (a numpy array views them), the rest as marshal_unpack would make it. A plain message (the
   kinds marshal_pack_direct packs itself) is unpacked here, without msgpack's call (measured:
   about 0.2 us a call), into the same objects. */
PyObject *marshal_unpack_split(Marshal *m, const frame_split *s);

/* unpack_plain(env, big=None, at=0), for tests: what marshal_unpack_split makes of a plain message
   itself (lane.c: a reply [0, result] or a call [method, [args...], {}] of None, bools, ints,
   floats, strs and bins; `big` the bin split out at `at`), or None where it asks msgpack. */
PyObject *lane_unpack_plain(PyObject *self, PyObject *args);

/* A call [method, [args...], {}] or a reply [0, result] (as rpc/marshal.py packs them) packed here,
   into its bytes, the same bytes marshal_pack makes (issue 13 item 4), if every positional argument
   (or the result) is a bytes, bytearray or C-contiguous memoryview below DIRECT_MAX bytes (each
   copied once, straight: bulk.BULK_MIN and up are the bulk guard's), None, a bool, an int of 64
   bits, a float or a str; or if one of them is such a buffer of SPLIT_MIN bytes or more, the other
   arguments then by the packer. Small calls so skip the packer's call and its buffer (measured:
   about 0.3 us a call). NULL without an exception for any other message (then marshal_pack it);
   NULL with an exception only for one that is not an Exception. */
#define DIRECT_MAX 131072
PyObject *marshal_pack_direct(Marshal *m, PyObject *obj);

/* ---- typed results: a small immutable record with named fields, made only here. Its fields
   are read-only members of kind Py_T_OBJECT_EX, read as fast as __slots__ (the interpreter
   specializes such reads; those of a PyStructSequence, whose members are T_OBJECT, it does
   not: four reads cost about 4x). A record type is a static PyTypeObject with its name, doc and
   RECORD_TYPE_SLOTS; record_ready gives it its fields. */
typedef struct {
    PyObject_HEAD
    PyObject *field[];        /* one per name */
} Record;

#define RECORD_TYPE_SLOTS                                                                        \
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,     \
    .tp_dealloc = native_dealloc, .tp_traverse = record_traverse, .tp_clear = record_clear,    \
    .tp_repr = record_repr

int record_traverse(PyObject *self, visitproc visit, void *arg);
int record_clear(PyObject *self);
PyObject *record_repr(PyObject *self);

/* Give `type` the fields `names` (NULL-terminated; strings that live forever) and ready it:
   0, or -1 with an exception. */
int record_ready(PyTypeObject *type, const char *const *names);

/* A new record of `type` whose fields are values[0..n) (references stolen; a NULL value, a
   failed conversion, makes it NULL with that exception set, the others released). */
PyObject *record_new(PyTypeObject *type, PyObject **values);

/* ---- the client lanes' ends and replies (call_lane.c, pipe_lane.c): the one check of each */

/* A client lane's channels as its constructor got them (`unit`: the request writer's slot size;
   `fifo`: the caller's FifoMap): 0, or -1 with `who`'s ValueError or TypeError. */
int lane_check_ends(const char *who, Py_ssize_t unit, Py_ssize_t max_payload, PyObject *fifo,
                    unsigned long long reply_base, Py_ssize_t reply_size, Py_ssize_t reply_slot, PyObject *unpack);

/* The reply in the reply channel's slot at `off` if it is a whole REPLY/ERROR_REPLY of
   `connection_id`, of any call: 1 with its payload in *s (frame_take_split: a large bin copied out
   once, straight into the bytes the result will be), *kind and *call_id set; 0 (no exception)
   otherwise. */
int lane_take_reply(const unsigned char *reply_base, Py_ssize_t reply_size, Py_ssize_t reply_slot,
                    unsigned long long connection_id, uint64_t off, unsigned *kind, uint64_t *call_id,
                    frame_split *s);

/* A taken reply's result (LANE_VALUE: a REPLY that unmarshals to [0, result]) or its whole payload
   (LANE_REPLY, LANE_ERROR_REPLY) into *value: its status, or -1 with an exception. The split is
   cleared. */
int lane_settle_reply(Marshal *m, unsigned kind, frame_split *s, PyObject **value);

#endif
