"""Every public object used after close raises ClosedError, and never crashes the process (issue 11,
item 8).  Red-team case: on main ``RawView.intact()`` after its channel closed read unmapped memory
(SIGSEGV), and so did ``writer_state()`` of a closed channel end.

Each case runs in a forked child: a use that touches released memory would kill it by a signal,
which the test reports as such.  A case builds the object, closes it (or what it lives in), and
returns the use to try; the child reports the exception's type.
"""

from __future__ import annotations

import os
import traceback

import pytest

import ombm
from ombm.channels.raw import RawChannel
from ombm.channels.stream import Stream

pytestmark = pytest.mark.processes

TIMEOUT_S = 60.0


def _name(tag: str) -> str:
    return f"uac-{tag}-{os.getpid()}"


def _raw(tag: str):
    w = RawChannel.create(_name(tag), unit_size=64, units=4)
    r = RawChannel.open(_name(tag))
    w.write(b"frame")
    return w, r


def _stream(tag: str):
    w = Stream.create(_name(tag), slot_bytes=128, slots=4)
    r = Stream.open(_name(tag))
    w.send(b"message")
    return w, r


def _segment_region(tag: str):
    seg = ombm.create_segment(4096, name=_name(tag))
    return seg, seg.bind()


# each: () -> (use after close, things to close at the end)
def raw_view_intact():
    w, r = _raw("view")
    view = r.recv_view(TIMEOUT_S)
    view.release()          # the user is done with the data, then checks it: the documented order
    r.close()
    return view.intact, [w]


def raw_view_intact_unreleased():
    w, r = _raw("view2")
    view = r.recv_view(TIMEOUT_S)
    r.close()
    return view.intact, [w]


def _raw_use(end, method, *args):
    def case():
        w, r = _raw(end[4] + method[:6])
        closed, other = (r, w) if end == "raw_reader" else (w, r)
        closed.close()
        return (lambda: getattr(closed, method)(*args)), [other]
    case.__name__ = f"{end}_{method}"
    return case


def _stream_use(end, method, *args):
    def case():
        w, r = _stream(end[0] + method[:8])
        closed, other = (w, r) if end == "writer" else (r, w)
        closed.close(flush_timeout=0)
        if method == "iter":
            return (lambda: next(iter(closed))), [other]
        return (lambda: getattr(closed, method)(*args)), [other]
    case.__name__ = f"stream_{end}_{method}"
    return case


def array_view_after_release():
    import numpy as np

    w, r = _stream("av")
    w.send_array(np.arange(4))
    r.recv(TIMEOUT_S)
    view = r.recv_array(TIMEOUT_S)
    view.release()
    r.close()
    return (lambda: view.array), [w]


def segment_bind():
    seg, region = _segment_region("sb")
    seg.release()
    return seg.bind, []


def segment_directory():
    seg, region = _segment_region("sd")
    seg.release()
    return seg.directory.entries, []


def segment_directory_claim():
    seg, region = _segment_region("sc")
    seg.release()
    return (lambda: seg.directory.claim(2, 1, 0, 64)), []


def _region_use(method, release_segment):
    def case():
        seg, region = _segment_region("rg" + method[:6] + str(int(release_segment)))
        address = region.address
        args = {"write": (0, b"x"), "read": (0, 1), "offset_of": (address,)}[method]
        if release_segment:
            seg.release()
            return (lambda: getattr(region, method)(*args)), []
        region.unbind()
        return (lambda: getattr(region, method)(*args)), [seg]
    case.__name__ = f"region_{method}" + ("_segment_released" if release_segment else "_unbound")
    return case


def _receiver_use(method, kernel):
    def case():
        receiver = ombm.Receiver(kernel=kernel)
        seg, region = _segment_region("rc" + method[:6] + str(int(kernel)))
        receiver.close()
        args = {"add_handler": (region.address, 64, print), "dispatch_pending": (), "wait_once": (0.01,),
                "pop_wait": (0.01,), "wait": (0.01,), "nudge": (), "dispatch": (1, 0)}[method]
        return (lambda: getattr(receiver, method)(*args)), [seg]
    case.__name__ = f"receiver_{method}" + ("_kernel" if kernel else "")
    return case


def dispatcher_signal_handler():
    dispatcher = ombm.Dispatcher()
    seg, region = _segment_region("ds")
    dispatcher.close()
    return (lambda: dispatcher.signal_handler(region.address, 64, print)), [seg]


def signal_handle_after_close():
    """A SignalHandle's only operation is disable(), idempotent: after its receiver closed or its
    region went it is already disabled, and disabling it again touches nothing (no ClosedError)."""
    receiver = ombm.Receiver()
    seg, region = _segment_region("sh")
    handle = receiver.add_handler(region.address, 64, print)
    other = receiver.add_handler(region.address + 64, 64, print)
    receiver.close()
    seg.release()

    def use():
        handle.disable()
        other.disable()
        return handle.enabled, other.enabled

    return use, []


signal_handle_after_close.returns = "(False, False)"  # type: ignore[attr-defined]


class _Echo:
    def echo(self, x):
        return x


def _client_use(method):
    def case():
        name = _name("cl" + method[:6])
        server = ombm.rpc.Server(name, _Echo()).start()
        client = ombm.rpc.connect(name, timeout=TIMEOUT_S)
        client.close()
        use = {"call": lambda: client.call("echo", 1), "attribute": lambda: client.echo(1),
               "call_async": lambda: client.call_async("echo", 1), "oneway": lambda: client.oneway("echo", 1)}[method]
        return use, [server]
    case.__name__ = f"client_{method}"
    return case


def _server_use(method):
    def case():
        server = ombm.rpc.Server(_name("sv" + method[:6]), _Echo())
        server.stop()
        return getattr(server, method), []
    case.__name__ = f"server_{method}"
    return case


CASES = [
    raw_view_intact, raw_view_intact_unreleased,
    *[_raw_use("raw_reader", m, *a) for m, a in [("recv", (0.01,)), ("recv_nowait", ()), ("recv_into", (bytearray(64), 0.01)),
                                         ("recv_view", (0.01,)), ("read", (0,)), ("writer_state", ()),
                                         ("writer_alive", ())]],
    *[_raw_use("raw_writer", m, *a) for m, a in [("write", (b"x",)), ("begin", ()), ("commit", (1,)), ("writer_state", ())]],
    *[_stream_use("writer", m, *a) for m, a in [("send", (b"x", 0.01)), ("send_nowait", (b"x",)), ("flush", (0.01,)),
                                               ("writer_state", ()), ("writer_alive", ())]],
    *[_stream_use("reader", m, *a) for m, a in [("recv", (0.01,)), ("recv_nowait", ()), ("recv_array", (0.01,)),
                                               ("iter", ()), ("writer_state", ()), ("writer_alive", ())]],
    array_view_after_release,
    segment_bind, segment_directory, segment_directory_claim,
    *[_region_use(m, rel) for m in ("write", "read", "offset_of") for rel in (False, True)],
    *[_receiver_use(m, k) for m in ("add_handler", "dispatch_pending", "wait_once", "pop_wait", "wait", "nudge",
                                    "dispatch") for k in (False, True)],
    dispatcher_signal_handler, signal_handle_after_close,
    *[_client_use(m) for m in ("call", "attribute", "call_async", "oneway")],
    *[_server_use(m) for m in ("start", "serve_forever")],
]


def _child(conn, case) -> None:
    try:
        use, leftovers = case()
        try:
            result = use()
            conn.send(("returned", repr(result)[:200]))
        except BaseException as exc:
            conn.send(("raised", type(exc).__name__, isinstance(exc, ombm.ClosedError), str(exc)[:200]))
        for thing in leftovers:
            if isinstance(thing, ombm.rpc.Server):
                thing.stop()
            elif isinstance(thing, ombm.Segment):
                thing.release()
            else:
                thing.close()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_use_after_close_raises_closed_error_and_never_crashes(procs, case):
    parent, child = procs.pipe()
    p = procs.fork(_child, child, case)
    p.join(TIMEOUT_S)
    assert p.exitcode is not None, "the child hung"
    assert p.exitcode >= 0, f"the child was killed by signal {-p.exitcode}: a use after close touched freed memory"
    assert parent.poll(0), "the child reported nothing"
    report = parent.recv()
    assert report[0] != "error", report[1]
    if hasattr(case, "returns"):  # idempotent by design: a no-op after close
        assert report == ("returned", case.returns)
    else:
        assert report[0] == "raised" and report[2], f"not ClosedError: {report}"
    assert p.exitcode == 0
