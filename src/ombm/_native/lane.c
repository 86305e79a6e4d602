/*
 * What the two RPC lanes share (paper §4): marshalling with rpc/marshal.py's msgpack objects,
 * and the typed records CallLane.call and RequestIntake.serve return. See lane.h.
 */
#include "lane.h"

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
