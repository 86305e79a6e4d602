/*
 * ombm._native, the module (DESIGN.md §3): created here; each part (native.h maps them) adds its
 * functions and types, and this file the integer constants Python reads (defined in native.h
 * and lane.h).
 */
#include "lane.h"
#include "net.h"

#define CONSTANT(name) {#name, name}

static const struct {
    const char *name;
    long value;
} constants[] = {
    /* the FIFO layout, checked against _layout.py at import (_layout.check_native) */
    CONSTANT(FIFO_TAIL), CONSTANT(FIFO_HEAD), CONSTANT(FIFO_SLEEP), CONSTANT(FIFO_CAPACITY), CONSTANT(FIFO_CELLS),
    CONSTANT(FIFO_DROPS), CONSTANT(CELL_SIZE), CONSTANT(FIFO_VERSION), CONSTANT(FIFO_STATE),
    CONSTANT(FIFO_PEER_CPU), CONSTANT(RECEIVER_RUNNING), CONSTANT(RECEIVER_SPINNING), CONSTANT(RECEIVER_ASLEEP),
    /* results: of a push, a wait, a call on the lane, a turn of the serving loop */
    CONSTANT(PUSH_OK), CONSTANT(PUSH_WOKE), CONSTANT(PUSH_DOORBELL), CONSTANT(PUSH_FULL),
    CONSTANT(WAIT_READY), CONSTANT(WAIT_TIMEOUT), CONSTANT(WAIT_STALLED),
    CONSTANT(LANE_VALUE), CONSTANT(LANE_REPLY), CONSTANT(LANE_ERROR_REPLY), CONSTANT(LANE_OTHER),
    CONSTANT(LANE_TIMEOUT), CONSTANT(LANE_STALLED), CONSTANT(LANE_UNSENT), CONSTANT(LANE_NOT_LENT),
    CONSTANT(SERVE_REQUEST), CONSTANT(SERVE_SIGNAL), CONSTANT(SERVE_LEARN), CONSTANT(SERVE_TIMEOUT),
    CONSTANT(SERVE_STALLED),
};

void native_dealloc(PyObject *self) {
    PyObject_GC_UnTrack(self);
    Py_TYPE(self)->tp_clear(self);
    Py_TYPE(self)->tp_free(self);
}

int native_add(PyObject *module, PyMethodDef *functions, PyTypeObject *const *types) {
    if (functions && PyModule_AddFunctions(module, functions) < 0) return -1;
    for (; types && *types; types++)
        if (PyModule_AddType(module, *types) < 0) return -1;
    return 0;
}

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "ombm._native",
    "Atomics and futexes on shared memory, the signal FIFO and its wait, signal-on-write, frames and "
    "their fused copy+checksum, and the RPC lanes.",
    -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (native_add_sync(m) < 0 || native_add_fifo(m) < 0 || native_add_frame(m) < 0 || native_add_writer(m) < 0 ||
        native_add_call_lane(m) < 0 || native_add_pipe_lane(m) < 0 || native_add_request_intake(m) < 0 || native_add_mapping(m) < 0 ||
        native_add_bridge(m) < 0 || native_add_net_engine(m) < 0 || native_add_stream_batch(m) < 0)
        goto fail;
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++)
        if (PyModule_AddIntConstant(m, constants[i].name, constants[i].value) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
