/*
 * What the RPC lanes share (paper §4): marshalling with rpc/marshal.py's msgpack objects, the
 * typed records CallLane.call and RequestIntake.serve return, and the client lanes' one check of
 * their channels and of a reply frame. See lane.h.
 */
#include "lane.h"
#include "fifo.h"

/* ---------------------------------------------------------------- marshalling */

int marshal_init(Marshal *m, PyObject *packer, PyObject *unpack, PyObject *ext_hook) {
    PyObject *pack = PyObject_GetAttrString(packer, "pack");
    PyObject *reset = pack ? PyObject_GetAttrString(packer, "reset") : NULL;
    PyObject *kwnames = Py_BuildValue("(ss)", "ext_hook", "strict_map_key");
    if (!pack || !reset || !kwnames) {
        Py_XDECREF(pack); Py_XDECREF(reset); Py_XDECREF(kwnames);
        return -1;
    }
    Py_XSETREF(m->pack, pack);
    Py_XSETREF(m->reset, reset);
    Py_XSETREF(m->kwnames, kwnames);
    Py_INCREF(unpack); Py_XSETREF(m->unpack, unpack);
    Py_INCREF(ext_hook); Py_XSETREF(m->ext_hook, ext_hook);
    return 0;
}

int marshal_traverse(Marshal *m, visitproc visit, void *arg) {
    Py_VISIT(m->pack); Py_VISIT(m->reset); Py_VISIT(m->unpack); Py_VISIT(m->ext_hook); Py_VISIT(m->kwnames);
    return 0;
}

void marshal_clear(Marshal *m) {
    Py_CLEAR(m->pack); Py_CLEAR(m->reset); Py_CLEAR(m->unpack); Py_CLEAR(m->ext_hook); Py_CLEAR(m->kwnames);
}

PyObject *marshal_pack(Marshal *m, PyObject *obj) {
    PyObject *data = PyObject_CallOneArg(m->pack, obj);
    if (data || !PyErr_ExceptionMatches(PyExc_Exception)) return data;
    PyErr_Clear();
    PyObject *r = PyObject_CallNoArgs(m->reset);
    Py_XDECREF(r);
    return NULL;
}

PyObject *marshal_unpack(Marshal *m, PyObject *data) {
    PyObject *argv[3] = {data, m->ext_hook, Py_False};
    PyObject *obj = PyObject_Vectorcall(m->unpack, argv, 1, m->kwnames);
    if (!obj && PyErr_ExceptionMatches(PyExc_Exception)) PyErr_Clear();
    return obj;
}

/* The placeholder's ext hook, self = (big, inner hook, code): ext SPLIT_CODE holding one zero byte
   (frame_take_split wrote it; the wire's own SPLIT_CODE is never split) is `big` if it was a bin
   (code None), else the inner hook's object for ext `code` holding `big`; anything else the inner
   hook's. */
static PyObject *split_hook(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int overflow;
    if (nargs == 2 && PyLong_CheckExact(args[0]) && PyLong_AsLongAndOverflow(args[0], &overflow) == SPLIT_CODE &&
        PyBytes_CheckExact(args[1]) && PyBytes_GET_SIZE(args[1]) == 1 && PyBytes_AS_STRING(args[1])[0] == 0) {
        PyObject *code = PyTuple_GET_ITEM(self, 2);
        if (code == Py_None) return Py_NewRef(PyTuple_GET_ITEM(self, 0));
        return PyObject_Vectorcall(PyTuple_GET_ITEM(self, 1), (PyObject *[]){code, PyTuple_GET_ITEM(self, 0)}, 2, NULL);
    }
    return PyObject_Vectorcall(PyTuple_GET_ITEM(self, 1), args, (size_t)nargs, NULL);
}

static PyMethodDef split_hook_def = {"split_hook", (PyCFunction)(void (*)(void))split_hook, METH_FASTCALL,
                                     "a large item's placeholder, else the marshal ext hook"};

/* ---- plain messages, unpacked here: a reply [0, result] or a call [method, [args...], {}] whose
   result or arguments are None, bools, ints, floats, strs and bins (what marshal_pack_direct packs
   itself), exactly as msgpack.unpackb makes them; anything else is msgpack's. Every length is
   checked against the private copy's end before it is used. */
typedef struct {
    const unsigned char *p;
    Py_ssize_t n, pos;
    const frame_split *s;  /* the split the bytes come from: its placeholder is its big bin */
} plain_reader;

enum { PLAIN_NOT = 0, PLAIN_ERROR = -1 };

static const unsigned char *plain_take(plain_reader *r, uint64_t k) {
    if (k > (uint64_t)(r->n - r->pos)) return NULL;
    const unsigned char *at = r->p + r->pos;
    r->pos += (Py_ssize_t)k;
    return at;
}

static uint64_t plain_be(const unsigned char *p, int k) {
    uint64_t v = 0;
    for (int i = 0; i < k; i++) v = v << 8 | p[i];
    return v;
}

/* A length of k big-endian bytes (k 0: `fix`), then that many bytes: where they are, or NULL. */
static const unsigned char *plain_body(plain_reader *r, int k, uint64_t fix, uint64_t *len) {
    const unsigned char *h = k ? plain_take(r, (uint64_t)k) : NULL;
    if (k && !h) return NULL;
    *len = k ? plain_be(h, k) : fix;
    return plain_take(r, *len);
}

/* One plain item: a new reference, or NULL with *state PLAIN_NOT (not plain, or not msgpack: no
   exception) or PLAIN_ERROR (an exception). */
static PyObject *plain_item(plain_reader *r, int *state) {
    *state = PLAIN_NOT;
    const unsigned char *h = plain_take(r, 1), *at;
    if (!h) return NULL;
    unsigned b = h[0];
    uint64_t len;
    PyObject *o = NULL;
    if (b <= 0x7f) o = PyLong_FromLong((long)b);
    else if (b >= 0xe0) o = PyLong_FromLong((long)b - 256);
    else if (b == 0xc0) return Py_NewRef(Py_None);
    else if (b == 0xc2 || b == 0xc3) return Py_NewRef(b == 0xc3 ? Py_True : Py_False);
    else if (b >= 0xcc && b <= 0xcf) {
        int k = 1 << (b - 0xcc);
        if (!(at = plain_take(r, (uint64_t)k))) return NULL;
        o = PyLong_FromUnsignedLongLong(plain_be(at, k));
    } else if (b >= 0xd0 && b <= 0xd3) {
        int k = 1 << (b - 0xd0);
        if (!(at = plain_take(r, (uint64_t)k))) return NULL;
        uint64_t u = plain_be(at, k);
        if (k < 8 && (u >> (8 * k - 1)) & 1) u |= ~(uint64_t)0 << (8 * k);  /* sign-extended */
        o = PyLong_FromLongLong((long long)u);
    } else if (b == 0xca || b == 0xcb) {
        if (!(at = plain_take(r, b == 0xca ? 4 : 8))) return NULL;
        uint64_t u = plain_be(at, b == 0xca ? 4 : 8);
        double d;
        if (b == 0xca) {
            uint32_t u32 = (uint32_t)u;
            float f;
            memcpy(&f, &u32, 4);
            d = f;
        } else {
            memcpy(&d, &u, 8);
        }
        o = PyFloat_FromDouble(d);
    } else if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb)) {
        if (!(at = plain_body(r, (b & 0xe0) == 0xa0 ? 0 : 1 << (b - 0xd9), b & 31, &len))) return NULL;
        o = PyUnicode_DecodeUTF8((const char *)at, (Py_ssize_t)len, NULL);
        if (!o && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {  /* msgpack's, which says so */
            PyErr_Clear();
            return NULL;
        }
    } else if (b >= 0xc4 && b <= 0xc6) {
        if (!(at = plain_body(r, 1 << (b - 0xc4), 0, &len))) return NULL;
        o = PyBytes_FromStringAndSize((const char *)at, (Py_ssize_t)len);
    } else if (b == 0xd4 && r->s->big && r->s->code < 0 && r->pos - 1 == r->s->at) {  /* the placeholder of a bin */
        if (!(at = plain_take(r, 2)) || at[0] != SPLIT_CODE || at[1] != 0) return NULL;
        return Py_NewRef(r->s->big);
    } else {
        return NULL;  /* an array, a map, an ext: msgpack's */
    }
    if (!o) *state = PLAIN_ERROR;
    return o;
}

/* The plain message in s (a new reference), or NULL with *state as plain_item's. */
static PyObject *plain_message(const frame_split *s, int *state) {
    plain_reader r = {(const unsigned char *)PyBytes_AS_STRING(s->env), PyBytes_GET_SIZE(s->env), 0, s};
    const unsigned char *h = plain_take(&r, 1);
    PyObject *out = NULL, *first = NULL, *args = NULL;
    *state = PLAIN_NOT;
    if (!h) return NULL;
    if (h[0] == 0x92) {  /* [0, result] */
        if (!(h = plain_take(&r, 1)) || h[0] != 0) return NULL;
        PyObject *result = plain_item(&r, state);
        if (!result) return NULL;
        first = PyLong_FromLong(0);
        out = first ? PyList_New(2) : NULL;
        if (!out) {
            Py_XDECREF(first);
            Py_DECREF(result);
            *state = PLAIN_ERROR;
            return NULL;
        }
        PyList_SET_ITEM(out, 0, first);
        PyList_SET_ITEM(out, 1, result);
    } else if (h[0] == 0x93) {  /* [method, [args...], {}] */
        if (!(h = plain_take(&r, 1)) || !((h[0] & 0xe0) == 0xa0 || (h[0] >= 0xd9 && h[0] <= 0xdb))) return NULL;
        r.pos--;
        if (!(first = plain_item(&r, state))) return NULL;
        uint64_t count;
        if (!(h = plain_take(&r, 1))) goto not_plain;
        if ((h[0] & 0xf0) == 0x90) count = h[0] & 15;
        else if (h[0] == 0xdc && (h = plain_take(&r, 2))) count = plain_be(h, 2);
        else goto not_plain;
        if (count > (uint64_t)(r.n - r.pos)) goto not_plain;  /* each item takes a byte at least */
        if (!(args = PyList_New((Py_ssize_t)count))) goto error;
        for (uint64_t i = 0; i < count; i++) {
            PyObject *item = plain_item(&r, state);
            if (!item) {
                if (*state == PLAIN_ERROR) goto error;
                goto not_plain;
            }
            PyList_SET_ITEM(args, (Py_ssize_t)i, item);
        }
        if (!(h = plain_take(&r, 1)) || h[0] != 0x80) goto not_plain;
        PyObject *kwargs = PyDict_New();
        out = kwargs ? PyList_New(3) : NULL;
        if (!out) {
            Py_XDECREF(kwargs);
            goto error;
        }
        PyList_SET_ITEM(out, 0, first);
        PyList_SET_ITEM(out, 1, args);
        PyList_SET_ITEM(out, 2, kwargs);
    } else {
        return NULL;
    }
    if (r.pos != r.n) {  /* trailing bytes: msgpack's, which refuses them */
        Py_DECREF(out);
        *state = PLAIN_NOT;
        return NULL;
    }
    return out;
not_plain:
    *state = PLAIN_NOT;
    Py_XDECREF(first);
    Py_XDECREF(args);
    return NULL;
error:
    *state = PLAIN_ERROR;
    Py_XDECREF(first);
    Py_XDECREF(args);
    return NULL;
}

PyObject *lane_unpack_plain(PyObject *Py_UNUSED(self), PyObject *args) {
    frame_split s = {NULL, NULL, 0, -1, {0}, 0};
    PyObject *big = Py_None;
    if (!PyArg_ParseTuple(args, "O!|On:unpack_plain", &PyBytes_Type, &s.env, &big, &s.at)) return NULL;
    if (big != Py_None) {
        if (!PyBytes_CheckExact(big)) {
            PyErr_SetString(PyExc_TypeError, "unpack_plain: big must be bytes or None");
            return NULL;
        }
        s.big = big;
    }
    int how;
    PyObject *plain = plain_message(&s, &how);
    return plain || how == PLAIN_ERROR ? plain : Py_NewRef(Py_None);
}

PyObject *marshal_unpack_split(Marshal *m, const frame_split *s) {
    int how;
    PyObject *plain = plain_message(s, &how);
    if (plain || how == PLAIN_ERROR) return plain;
    if (!s->big) return marshal_unpack(m, s->env);
    PyObject *code = s->code < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(s->code);
    PyObject *state = code ? PyTuple_Pack(3, s->big, m->ext_hook, code) : NULL;
    Py_XDECREF(code);
    PyObject *hook = state ? PyCFunction_New(&split_hook_def, state) : NULL;
    Py_XDECREF(state);
    if (!hook) return NULL;
    PyObject *argv[3] = {s->env, hook, Py_False};
    PyObject *obj = PyObject_Vectorcall(m->unpack, argv, 1, m->kwnames);
    Py_DECREF(hook);
    if (!obj && PyErr_ExceptionMatches(PyExc_Exception)) PyErr_Clear();
    return obj;
}

/* msgpack's headers, big-endian lengths: the smallest form, as msgpack's Packer writes them. */
static Py_ssize_t put_head(unsigned char *p, unsigned fix, unsigned fixmax, unsigned b8, unsigned b16, size_t n) {
    if (fix && n <= fixmax) { p[0] = (unsigned char)(fix | n); return 1; }
    if (b8 && n < 256) { p[0] = (unsigned char)b8; p[1] = (unsigned char)n; return 2; }
    if (n < 65536) { p[0] = (unsigned char)b16; p[1] = (unsigned char)(n >> 8); p[2] = (unsigned char)n; return 3; }
    p[0] = (unsigned char)(b16 + 1);
    p[1] = (unsigned char)(n >> 24); p[2] = (unsigned char)(n >> 16); p[3] = (unsigned char)(n >> 8); p[4] = (unsigned char)n;
    return 5;
}

#define DIRECT_ITEMS 16  /* the most positional arguments a direct call packs */

/* One item of a direct message: how it is packed. */
enum { ITEM_PACKER, ITEM_BUFFER, ITEM_SCALAR, ITEM_TEXT };
typedef struct {
    int kind;
    Py_buffer view;           /* ITEM_BUFFER (released after) */
    PyObject *packed;         /* ITEM_PACKER: the packer's bytes */
    const char *text;         /* ITEM_TEXT: the str's UTF-8 (the str's own, cached) */
    Py_ssize_t len;           /* ITEM_TEXT: its length */
    unsigned char scalar[9];  /* ITEM_SCALAR: the whole encoding */
    int slen;
} direct_item;

static void put_be(unsigned char *p, uint64_t v, int n) {
    for (int i = n - 1; i >= 0; i--, v >>= 8) p[i] = (unsigned char)v;
}

/* An int as msgpack's Packer writes it (the smallest form; non-negative ones unsigned): its length
   in out, or 0 if it is beyond 64 bits (the packer's, which says why). */
static int put_int(unsigned char *out, PyObject *o) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        out[0] = 0xcf;
        put_be(out + 1, u, 8);
        return 9;
    }
    if (overflow < 0 || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    if (v >= 0) {
        uint64_t u = (uint64_t)v;
        if (u < 128) { out[0] = (unsigned char)u; return 1; }
        if (u < 256) { out[0] = 0xcc; put_be(out + 1, u, 1); return 2; }
        if (u < 65536) { out[0] = 0xcd; put_be(out + 1, u, 2); return 3; }
        if (u <= 0xffffffffu) { out[0] = 0xce; put_be(out + 1, u, 4); return 5; }
        out[0] = 0xcf; put_be(out + 1, u, 8); return 9;
    }
    if (v >= -32) { out[0] = (unsigned char)(0xe0 | (v + 32)); return 1; }
    if (v >= -128) { out[0] = 0xd0; put_be(out + 1, (uint64_t)v, 1); return 2; }
    if (v >= -32768) { out[0] = 0xd1; put_be(out + 1, (uint64_t)v, 2); return 3; }
    if (v >= -2147483648LL) { out[0] = 0xd2; put_be(out + 1, (uint64_t)v, 4); return 5; }
    out[0] = 0xd3; put_be(out + 1, (uint64_t)v, 8); return 9;
}

/* How item o is packed: ITEM_BUFFER with it->view filled (release it) for a bytes, bytearray or
   C-contiguous memoryview, ITEM_SCALAR (None, a bool, an int of 64 bits, a float: encoded in
   it->scalar) or ITEM_TEXT (a str, as UTF-8) for what is packed here as msgpack's Packer packs
   it, ITEM_PACKER for anything else; -1 for a large payload (the bulk guard's: the message is not
   packed here). No exception either way. */
static int direct_kind(PyObject *o, direct_item *it) {
    Py_ssize_t n;
    if (PyBytes_CheckExact(o)) n = PyBytes_GET_SIZE(o);
    else if (PyByteArray_CheckExact(o)) n = PyByteArray_GET_SIZE(o);
    else if (Py_IS_TYPE(o, &PyMemoryView_Type)) n = PyMemoryView_GET_BUFFER(o)->len;
    else if (o == Py_None) { it->scalar[0] = 0xc0; it->slen = 1; return ITEM_SCALAR; }
    else if (PyBool_Check(o)) { it->scalar[0] = o == Py_True ? 0xc3 : 0xc2; it->slen = 1; return ITEM_SCALAR; }
    else if (PyLong_CheckExact(o)) return (it->slen = put_int(it->scalar, o)) ? ITEM_SCALAR : ITEM_PACKER;
    else if (PyFloat_CheckExact(o)) {
        double d = PyFloat_AS_DOUBLE(o);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        it->scalar[0] = 0xcb;
        put_be(it->scalar + 1, bits, 8);
        it->slen = 9;
        return ITEM_SCALAR;
    } else if (PyUnicode_CheckExact(o)) {
        it->text = PyUnicode_AsUTF8AndSize(o, &it->len);
        if (!it->text || it->len >= DIRECT_MAX) {  /* a lone surrogate, a long str: the packer's */
            PyErr_Clear();
            return ITEM_PACKER;
        }
        return ITEM_TEXT;
    }
    else return frame_buffer_size(o) >= DIRECT_MAX ? -1 : ITEM_PACKER;
    if (n >= DIRECT_MAX) return -1;
    if (PyObject_GetBuffer(o, &it->view, PyBUF_SIMPLE) < 0) {  /* a non-contiguous memoryview: the packer's */
        PyErr_Clear();
        return ITEM_PACKER;
    }
    return ITEM_BUFFER;
}

PyObject *marshal_pack_direct(Marshal *m, PyObject *obj) {
    if (!PyList_CheckExact(obj)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(obj), count;
    PyObject *const *items;
    PyObject *method = NULL;
    if (n == 2) {  /* [0, result] */
        PyObject *tag = PyList_GET_ITEM(obj, 0);
        int overflow;
        if (!PyLong_CheckExact(tag) || PyLong_AsLongAndOverflow(tag, &overflow) != 0 || overflow) return NULL;
        items = &PyList_GET_ITEM(obj, 1);
        count = 1;
    } else if (n == 3) {  /* [method, [args...], {}] */
        method = PyList_GET_ITEM(obj, 0);
        PyObject *args = PyList_GET_ITEM(obj, 1), *kwargs = PyList_GET_ITEM(obj, 2);
        if (!PyUnicode_CheckExact(method) || !PyList_CheckExact(args) || !PyDict_CheckExact(kwargs) ||
            PyDict_GET_SIZE(kwargs) || PyList_GET_SIZE(args) > DIRECT_ITEMS)
            return NULL;
        items = ((PyListObject *)args)->ob_item;
        count = PyList_GET_SIZE(args);
    } else {
        return NULL;
    }
    direct_item it[DIRECT_ITEMS];
    Py_ssize_t i, done = 0, total = 0, packer_items = 0, big = 0;
    PyObject *out = NULL;
    for (i = 0; i < count; i++) {  /* first the type checks: what the packer would do in one call stays its */
        int k = direct_kind(items[i], &it[i]);
        if (k < 0) return NULL;
        if (k == ITEM_BUFFER) {
            big += it[i].view.len >= SPLIT_MIN;
            PyBuffer_Release(&it[i].view);
        }
        packer_items += k == ITEM_PACKER;
    }
    if (packer_items && !big) return NULL;  /* the packer's in one call, as cheap and no copy more */
    for (done = 0; done < count; done++) {
        it[done].kind = direct_kind(items[done], &it[done]);
        if (it[done].kind < 0) goto release;  /* (it changed meanwhile) */
        it[done].packed = NULL;
        switch (it[done].kind) {
        case ITEM_BUFFER: total += 5 + it[done].view.len; break;
        case ITEM_SCALAR: total += it[done].slen; break;
        case ITEM_TEXT: total += 5 + it[done].len; break;
        default:
            it[done].packed = marshal_pack(m, items[done]);  /* (may run Python code) */
            if (!it[done].packed) goto release;
            total += PyBytes_GET_SIZE(it[done].packed);
        }
    }
    Py_ssize_t mlen = 0;
    const char *mtext = NULL;
    if (method) {
        mtext = PyUnicode_AsUTF8AndSize(method, &mlen);
        if (!mtext) { PyErr_Clear(); goto release; }  /* (a lone surrogate: the packer says why) */
        total += 5 + mlen + 5 + 1 + 1;
    } else {
        total += 2;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) goto release;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    if (method) {
        *p++ = 0x93;
        p += put_head(p, 0xa0, 31, 0xd9, 0xda, (size_t)mlen);
        memcpy(p, mtext, (size_t)mlen);
        p += mlen;
        p += put_head(p, 0x90, 15, 0, 0xdc, (size_t)count);
    } else {
        *p++ = 0x92;
        *p++ = 0;
    }
    for (i = 0; i < count; i++) {
        switch (it[i].kind) {
        case ITEM_BUFFER:
            p += put_head(p, 0, 0, 0xc4, 0xc5, (size_t)it[i].view.len);
            memcpy(p, it[i].view.buf, (size_t)it[i].view.len);  /* the one copy of the payload */
            p += it[i].view.len;
            break;
        case ITEM_SCALAR:
            memcpy(p, it[i].scalar, (size_t)it[i].slen);
            p += it[i].slen;
            break;
        case ITEM_TEXT:
            p += put_head(p, 0xa0, 31, 0xd9, 0xda, (size_t)it[i].len);
            memcpy(p, it[i].text, (size_t)it[i].len);
            p += it[i].len;
            break;
        default: {
            Py_ssize_t k = PyBytes_GET_SIZE(it[i].packed);
            memcpy(p, PyBytes_AS_STRING(it[i].packed), (size_t)k);
            p += k;
        }
        }
    }
    if (method) *p++ = 0x80;
    if (_PyBytes_Resize(&out, (Py_ssize_t)(p - (unsigned char *)PyBytes_AS_STRING(out))) < 0) out = NULL;
release:
    for (i = 0; i < done; i++) {
        if (it[i].kind == ITEM_BUFFER) PyBuffer_Release(&it[i].view);
        else if (it[i].kind == ITEM_PACKER) Py_XDECREF(it[i].packed);
    }
    if (!out && PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_Exception)) PyErr_Clear();
    return out;
}

/* ---------------------------------------------------------------- typed results */

#define RECORD_FIELD(i) ((Py_ssize_t)(offsetof(Record, field) + (size_t)(i) * sizeof(PyObject *)))

static Py_ssize_t record_length(PyTypeObject *type) {
    return (type->tp_basicsize - RECORD_FIELD(0)) / (Py_ssize_t)sizeof(PyObject *);
}

int record_ready(PyTypeObject *type, const char *const *names) {
    Py_ssize_t n = 0;
    while (names[n]) n++;
    PyMemberDef *members = PyMem_Calloc((size_t)n + 1, sizeof(PyMemberDef));  /* the type's, for good */
    if (!members) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        members[i] = (PyMemberDef){names[i], Py_T_OBJECT_EX, RECORD_FIELD(i), Py_READONLY, NULL};
    type->tp_members = members;
    type->tp_basicsize = RECORD_FIELD(n);
    return PyType_Ready(type);
}

int record_traverse(PyObject *self, visitproc visit, void *arg) {
    Record *r = (Record *)self;
    for (Py_ssize_t i = 0, n = record_length(Py_TYPE(self)); i < n; i++) Py_VISIT(r->field[i]);
    return 0;
}

int record_clear(PyObject *self) {
    Record *r = (Record *)self;
    for (Py_ssize_t i = 0, n = record_length(Py_TYPE(self)); i < n; i++) Py_CLEAR(r->field[i]);
    return 0;
}

/* Name(field=value, ...), the fields in their members' order */
PyObject *record_repr(PyObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    const char *name = strrchr(type->tp_name, '.');
    PyObject *parts = PyList_New(0);
    if (!parts) return NULL;
    for (PyMemberDef *m = type->tp_members; m && m->name; m++) {
        PyObject *part = PyUnicode_FromFormat("%s=%R", m->name, *(PyObject **)((char *)self + m->offset));
        if (!part || PyList_Append(parts, part) < 0) {
            Py_XDECREF(part);
            Py_DECREF(parts);
            return NULL;
        }
        Py_DECREF(part);
    }
    PyObject *sep = PyUnicode_FromString(", ");
    PyObject *joined = sep ? PyUnicode_Join(sep, parts) : NULL;
    Py_XDECREF(sep);
    Py_DECREF(parts);
    if (!joined) return NULL;
    PyObject *repr = PyUnicode_FromFormat("%s(%U)", name ? name + 1 : type->tp_name, joined);
    Py_DECREF(joined);
    return repr;
}

PyObject *record_new(PyTypeObject *type, PyObject **values) {
    Py_ssize_t n = record_length(type);
    Record *r = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!values[i]) goto fail;
    r = PyObject_GC_New(Record, type);
    if (!r) goto fail;
    memcpy(r->field, values, (size_t)n * sizeof(PyObject *));
    PyObject_GC_Track(r);
    return (PyObject *)r;
fail:
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(values[i]);
    return NULL;
}

/* ---- the client lanes' ends and replies (call_lane.c, pipe_lane.c) */

int lane_check_ends(const char *who, Py_ssize_t unit, Py_ssize_t max_payload, PyObject *fifo,
                    unsigned long long reply_base, Py_ssize_t reply_size, Py_ssize_t reply_slot, PyObject *unpack) {
    if (max_payload < 0 || max_payload + TRAILER > unit) {
        PyErr_Format(PyExc_ValueError, "%s: max_payload does not fit the request channel's slots", who);
        return -1;
    }
    if (!as_fifo(fifo)) return -1;
    if (!reply_base || reply_slot < TRAILER || reply_size < reply_slot) {
        PyErr_Format(PyExc_ValueError, "%s: bad reply channel geometry", who);
        return -1;
    }
    if (!PyCallable_Check(unpack)) {
        PyErr_Format(PyExc_TypeError, "%s: unpack must be callable", who);
        return -1;
    }
    return 0;
}

int lane_take_reply(const unsigned char *reply_base, Py_ssize_t reply_size, Py_ssize_t reply_slot,
                    unsigned long long connection_id, uint64_t off, unsigned *kind, uint64_t *call_id,
                    frame_split *s) {
    if (off >= (uint64_t)reply_size) return 0;
    Py_ssize_t start = (Py_ssize_t)off / reply_slot * reply_slot;
    if (start + reply_slot > reply_size) return 0;
    frame_trailer t;
    const char *why;
    if (frame_take_split(reply_base + start, reply_slot, &t, &why, s) < 0) {
        PyErr_Clear();  /* not a frame (or out of memory): Python takes the signal */
        return 0;
    }
    if (t.frag_count != 1 || (t.kind != KIND_REPLY && t.kind != KIND_ERROR_REPLY) || t.connection_id != connection_id ||
        !t.message_id) {
        frame_split_clear(s);
        return 0;
    }
    *kind = t.kind;
    *call_id = t.message_id;
    return 1;
}

/* The result in a REPLY payload that unmarshals to [0, result] (a new reference), or NULL
   (no exception unless one that is not an Exception was raised) for anything else. */
static PyObject *lane_result(Marshal *m, const frame_split *s) {
    PyObject *reply = marshal_unpack_split(m, s);
    if (!reply) return NULL;
    PyObject *result = NULL;
    if (PyList_CheckExact(reply) && PyList_GET_SIZE(reply) == 2) {
        PyObject *tag = PyList_GET_ITEM(reply, 0);
        int overflow;
        if (PyLong_CheckExact(tag) && PyLong_AsLongAndOverflow(tag, &overflow) == 0 && !overflow)
            result = Py_NewRef(PyList_GET_ITEM(reply, 1));
    }
    Py_DECREF(reply);
    return result;
}

int lane_settle_reply(Marshal *m, unsigned kind, frame_split *s, PyObject **value) {
    *value = kind == KIND_REPLY ? lane_result(m, s) : NULL;
    if (*value || PyErr_Occurred()) {
        frame_split_clear(s);
        return *value ? LANE_VALUE : -1;
    }
    *value = frame_split_join(s);
    frame_split_clear(s);
    if (!*value) return -1;
    return kind == KIND_ERROR_REPLY ? LANE_ERROR_REPLY : LANE_REPLY;
}
