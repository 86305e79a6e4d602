"""Bulk segments (rpc/bulk.py) and their marshalling, both sides in this process: spans written once
and read once, descriptors checked as hostile input, the segment reused only once read."""

from __future__ import annotations

import os
import struct

import msgpack
import pytest

import ombm
from ombm import _native
from ombm.errors import MessageTooLargeError, UnmarshalError
from ombm.rpc import bulk, marshal

N = 3 * bulk.BULK_MIN  # a payload that travels in the bulk segment


@pytest.fixture
def pair():
    """(sender A, receiver B): A writes its segment ``a`` and reads ``b``; B the other way round."""
    tag = f"bulk-{os.getpid()}-{os.urandom(4).hex()}"
    a, b = bulk.create(f"{tag}-a"), bulk.create(f"{tag}-b")
    a2, b2 = bulk.open_bulk(a.name), bulk.open_bulk(b.name)
    sender, receiver = bulk.Bulk(a, b), bulk.Bulk(b2, a2)
    try:
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


def _payload(n: int = N) -> bytes:
    return os.urandom(n)


def test_a_call_and_its_reply_travel_as_descriptors(pair):
    sender, receiver = pair
    data = _payload()
    message = marshal.encode_call("echo", (data,), {"also": bytearray(data)}, bulk=sender)
    assert len(message) < 200  # descriptors, not the payloads
    method, args, kwargs = marshal.decode_call(message, bulk=receiver)
    assert (method, args, kwargs) == ("echo", (data,), {"also": data})
    assert type(args[0]) is bytes and type(kwargs["also"]) is bytes
    reply = marshal.encode_result(memoryview(data), bulk=receiver)
    assert len(reply) < 100
    assert marshal.decode_reply(reply, bulk=sender) == data


def test_small_payloads_and_nested_ones_travel_inline(pair):
    sender, _ = pair
    small = _payload(bulk.BULK_MIN - 1)
    assert len(marshal.encode_call("f", (small,), bulk=sender)) > len(small)
    assert len(marshal.encode_result([_payload()], bulk=sender)) > N  # inside a list: inline


def test_numpy_arrays_come_back_read_only_and_equal(pair):
    np = pytest.importorskip("numpy")
    sender, receiver = pair
    arr = np.arange(N, dtype=np.float64).reshape(-1, 8)[:, ::2]  # not C-contiguous: copied to be sent
    message = marshal.encode_result(arr, bulk=sender)
    assert len(message) < 200
    got = marshal.decode_reply(message, bulk=receiver)
    assert got.dtype == arr.dtype and got.shape == arr.shape and (got == arr).all()
    assert not got.flags.writeable


def test_the_receiver_owns_what_it_gets(pair):
    """A later write of the sender (the span reused, or scribbled on) never shows in what was received."""
    sender, receiver = pair
    data = _payload()
    got = marshal.decode_reply(marshal.encode_result(data, bulk=sender), bulk=receiver)
    buf = sender.out._buf
    buf[64:64 + N] = b"\xff" * N
    assert got == data


def test_the_segment_is_reused_from_the_front_once_read(pair):
    sender, receiver = pair
    first = sender.put(_payload(), N)
    second = sender.put(_payload(), N)
    offsets = [bulk.DESCRIPTOR.unpack(d)[1] for d in (first, second)]
    assert offsets[1] > offsets[0]  # the first not read yet: appended
    receiver.take(first, [1 << 40])
    receiver.take(second, [1 << 40])
    third = sender.put(_payload(), N)
    assert bulk.DESCRIPTOR.unpack(third)[1] == offsets[0]  # both read: from the front again


def test_a_full_segment_sends_inline(pair):
    sender, _ = pair
    size = bulk.BULK_SIZE // 4
    descriptors = [sender.put(_payload(size), size) for _ in range(5)]
    assert descriptors[-1] is None and all(d is not None for d in descriptors[:3])
    message = marshal.encode_result(_payload(size), bulk=sender)
    assert len(message) > size  # no room: inline, still right


def test_cancelled_spans_are_not_awaited(pair):
    sender, receiver = pair
    sent = sender.put(_payload(), N)
    sender.put(_payload(), N)
    sender.cancel(1)  # (that message failed: never sent)
    receiver.take(sent, [1 << 40])
    assert bulk.DESCRIPTOR.unpack(sender.put(_payload(), N))[1] == 64  # all sent spans read: the front


def _desc(descriptor: bytes, **change: int) -> bytes:
    fields = dict(zip(("seg", "offset", "length", "seq", "crc"), bulk.DESCRIPTOR.unpack(descriptor)))
    fields.update(change)
    return bulk.DESCRIPTOR.pack(*fields.values())


def test_hostile_descriptors_are_refused(pair):
    sender, receiver = pair
    good = sender.put(_payload(), N)
    seg, offset, length, seq, crc = bulk.DESCRIPTOR.unpack(good)
    size = receiver.inn._size
    bad = {
        "another segment": _desc(good, seg=seg ^ 1),
        "past the end": _desc(good, offset=size - 64),
        "huge length": _desc(good, length=(1 << 64) - 1),
        "before the spans": _desc(good, offset=0),
        "unaligned": _desc(good, offset=offset + 1),
        "older generation": _desc(good, seq=seq - 1),
        "other checksum": _desc(good, crc=crc ^ 1),
        "other length": _desc(good, length=length - 1),
        "truncated": good[:-1],
    }
    for what, descriptor in bad.items():
        with pytest.raises(UnmarshalError):
            receiver.take(descriptor, [1 << 40])
            pytest.fail(what)
    with pytest.raises(MessageTooLargeError):
        receiver.take(good, [length - 1])
    assert receiver.take(good, [length]) == bytes(sender.out._buf[offset + 16:offset + 16 + length])


def test_a_reused_span_is_detected(pair):
    """The sender wrote another span where a descriptor points (a later generation): refused."""
    sender, receiver = pair
    old = sender.put(_payload(), N)
    receiver.take(old, [1 << 40])
    sender.put(_payload(), N)  # from the front again: over the old span
    with pytest.raises(UnmarshalError, match="overwritten"):
        receiver.take(old, [1 << 40])


def test_a_message_takes_at_most_its_limit_of_bulk_data(pair):
    sender, receiver = pair
    message = marshal.encode_call("f", (_payload(), _payload()), bulk=sender)
    with pytest.raises(MessageTooLargeError):
        marshal.decode_call(message, bulk=receiver, bulk_limit=N + N // 2)
    message = marshal.encode_call("f", (_payload(), _payload()), bulk=sender, bulk_limit=N + N // 2)
    assert len(message) > N  # the second did not fit the sender's limit: inline
    assert marshal.decode_call(message, bulk=receiver, bulk_limit=N + N // 2)[0] == "f"


def test_bulk_data_without_a_bulk_segment_is_refused(pair):
    sender, _ = pair
    message = marshal.encode_result(_payload(), bulk=sender)
    with pytest.raises(UnmarshalError, match="no bulk segment"):
        marshal.decode_reply(message)
    forged = msgpack.packb([0, msgpack.ExtType(6, b"\x00\x01\x03<f8" + struct.pack("<Q", 4) + b"x" * 36)])
    with pytest.raises(UnmarshalError):
        marshal.decode_reply(forged)


def test_a_channel_is_not_taken_for_a_bulk_segment():
    from ombm.rpc.slots import SlotChannel
    channel = SlotChannel.create(f"bulk-notone-{os.getpid()}", slots=2, slot_size=4096)
    try:
        with pytest.raises(ValueError):
            bulk.open_bulk(channel.name)
    finally:
        channel.close()


def test_the_guard_routes_large_payloads_away_from_the_lanes():
    packer = marshal.guarded_packer()
    assert msgpack.unpackb(packer.pack(["m", [b"x" * 10], {}])) == ["m", [b"x" * 10], {}]
    for message in (["m", [1, b"x" * bulk.BULK_MIN], {}], ["m", [], {"k": bytearray(bulk.BULK_MIN)}],
                    [0, memoryview(b"x" * bulk.BULK_MIN)]):
        with pytest.raises(BufferError):
            packer.pack(message)
    assert msgpack.unpackb(packer.pack([0, "x" * bulk.BULK_MIN])) == [0, "x" * bulk.BULK_MIN]  # str: not a buffer


def test_span_put_and_take_check_bounds_and_contents():
    seg = bytearray(4096)
    data = os.urandom(1000)
    crc = _native.span_put(seg, 64, 7, data)
    assert crc == _native.checksum(data, _native.checksum(struct.pack("<QQ", 7, 1000)))
    assert _native.span_take(seg, 64, 1000, 7, crc) == data
    assert _native.span_take(seg, 64, 1000, 8, crc) is None  # another generation
    assert _native.span_take(seg, 64, 999, 7, crc) is None  # another length
    seg[500] ^= 1
    assert _native.span_take(seg, 64, 1000, 7, crc) is None  # scribbled on
    for offset, length in ((-1, 5), (0, 4096 - 15), (4096 - 15, 0), (64, -1), (1 << 62, 1)):
        with pytest.raises(ValueError):
            _native.span_take(seg, offset, length, 7, crc)
    with pytest.raises(ValueError):
        _native.span_put(seg, 4096 - 1000, 1, data)


def test_the_lanes_hook_takes_bulk_data_only_within_the_budget_set(pair):
    """The client's lane unmarshals a reply's bulk data itself only within the budget set for that call;
    beyond it the reply fails there (and Python unmarshals it anew, with the message's own budget)."""
    sender, receiver = pair
    budget = [0]
    hook = marshal.ext_hook(False, receiver, budget)
    reply = marshal.encode_result(_payload(), bulk=sender)
    with pytest.raises(MessageTooLargeError):
        msgpack.unpackb(reply, ext_hook=hook)
    budget[0] = N
    assert len(msgpack.unpackb(reply, ext_hook=hook)[1]) == N and budget[0] == 0
    assert marshal.ext_hook(False) is marshal.ext_hook(False, None, budget)  # no bulk data: the plain hook


# ---------------------------------------------------------------- views (opt-in: payloads lent in place)


@pytest.fixture
def view_pair():
    """(sender A, receiver B lending what it receives as views)."""
    tag = f"bulk-{os.getpid()}-{os.urandom(4).hex()}"
    a, b = bulk.create(f"{tag}-a"), bulk.create(f"{tag}-b")
    a2, b2 = bulk.open_bulk(a.name), bulk.open_bulk(b.name)
    sender, receiver = bulk.Bulk(a, b), bulk.Bulk(b2, a2, views=True)
    try:
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


def test_views_lend_the_span_read_only_in_place(view_pair):
    sender, receiver = view_pair
    data = _payload()
    _, args, kwargs = marshal.decode_call(marshal.encode_call("f", (data,), {"k": data}, bulk=sender), bulk=receiver)
    for got in (args[0], kwargs["k"]):
        assert type(got) is memoryview and got.readonly and got == data
        with pytest.raises(TypeError):
            got[0] = 1  # type: ignore[index]
    seg, offset, length, _, _ = bulk.DESCRIPTOR.unpack(sender.put(data, N))
    sender.out._buf[offset + 16] ^= 0xFF  # no copy: what the sender's segment holds now shows (no checksum)
    assert args[0][0] == data[0] and kwargs["k"][0] == data[0]  # (the earlier spans, not this one)


def test_a_span_counts_as_read_when_its_last_view_is_gone(view_pair):
    """The sender reuses a span only once every view of it (slices, arrays) is gone: an honest
    sender never changes what a view shows."""
    sender, receiver = view_pair
    data = _payload()
    view = marshal.decode_reply(marshal.encode_result(data, bulk=sender), bulk=receiver)
    part = view[10:20]
    del view
    assert receiver.inn._consumed == 0
    second = sender.put(_payload(), N)
    assert bulk.DESCRIPTOR.unpack(second)[1] > 64  # still held: appended, the first span kept
    assert part == data[10:20]
    del part
    assert receiver.inn._consumed == 1
    receiver.take(second, [1 << 40])
    assert bulk.DESCRIPTOR.unpack(sender.put(_payload(), N))[1] == 64  # all gone: from the front


def test_a_view_outlives_its_connection(view_pair):
    """Memory safety: the mapping stays while a view lives, even after the connection closed."""
    sender, receiver = view_pair
    data = _payload()
    view = marshal.decode_reply(marshal.encode_result(data, bulk=sender), bulk=receiver)
    receiver.close()
    assert view == data
    with pytest.raises(UnmarshalError):
        receiver.take(sender.put(data, N), [1 << 40])


def test_views_of_numpy_arrays_are_read_only_arrays(view_pair):
    np = pytest.importorskip("numpy")
    sender, receiver = view_pair
    arr = np.arange(N // 8, dtype=np.float64)
    got = marshal.decode_reply(marshal.encode_result(arr, bulk=sender), bulk=receiver)
    assert (got == arr).all() and not got.flags.writeable
    del got
    assert receiver.inn._consumed == 1


def test_views_check_descriptors_and_generations(view_pair):
    sender, receiver = view_pair
    good = sender.put(_payload(), N)
    seg, offset, length, seq, crc = bulk.DESCRIPTOR.unpack(good)
    for descriptor in (_desc(good, seg=seg ^ 1), _desc(good, offset=receiver.inn._size - 64),
                       _desc(good, length=(1 << 64) - 1), _desc(good, seq=seq + 1), _desc(good, length=length - 1)):
        with pytest.raises(UnmarshalError):
            receiver.take(descriptor, [1 << 40])
    with pytest.raises(MessageTooLargeError):
        receiver.take(good, [length - 1])
    assert receiver.take(good, [length]) == bytes(sender.out._buf[offset + 16:offset + 16 + length])


def test_span_view_checks_bounds_and_header():
    seg = bytearray(4096)
    data = os.urandom(1000)
    _native.span_put(seg, 64, 7, data)
    span = _native.span_view(seg, 64, 1000, 7)
    assert span is not None
    view = memoryview(span)
    assert view.readonly and view == data
    assert _native.span_view(seg, 64, 1000, 8) is None  # another generation
    assert _native.span_view(seg, 64, 999, 7) is None  # another length
    for offset, length in ((-1, 5), (0, 4096 - 15), (4096 - 15, 0), (64, -1), (1 << 62, 1)):
        with pytest.raises(ValueError):
            _native.span_view(seg, offset, length, 7)
    with pytest.raises(BufferError):
        seg.extend(b"x")  # the segment's buffer is held while the view lives
    del view, span
    seg.extend(b"x")


def test_a_view_of_a_segment_its_peer_truncates_reads_zeros(view_pair):
    """A hostile peer shrinks the segment under a view: reading it neither crashes (no SIGBUS: the
    mapping is guarded while the view keeps it) nor shows anything but zeros past the new end,
    also after the connection closed."""
    sender, receiver = view_pair
    data = _payload()
    view = marshal.decode_reply(marshal.encode_result(data, bulk=sender), bulk=receiver)
    receiver.close()
    os.truncate(sender._segments[0].path, 0)
    assert len(view) == N and bytes(view) == bytes(N)


def test_the_expected_work_on_bulk_data_grows_with_its_bytes(pair):
    """``work_ns``: how much longer a waiter spins for a peer copying bulk data (measured on this
    machine once a Bulk exists): positive and proportional to the bytes."""
    small, large = bulk.work_ns(bulk.BULK_MIN), bulk.work_ns(8 * bulk.BULK_MIN)
    assert 0 < small < large
    assert bulk.work_ns(0) == 0


def test_the_expected_work_allows_half_as_much_on_an_overloaded_machine(pair, monkeypatch):
    """Where CPUs are free each of the peer's copies is allowed four times an in-cache copy, while
    more tasks are runnable than CPUs twice (``_native.overloaded``, the waits' own reading)."""
    monkeypatch.setattr(bulk, "_overloaded", lambda: True)
    loaded = bulk.work_ns(8 * bulk.BULK_MIN)
    monkeypatch.setattr(bulk, "_overloaded", lambda: False)
    free = bulk.work_ns(8 * bulk.BULK_MIN)
    assert 0 < loaded and abs(free - 2 * loaded) <= 1


def test_the_machine_is_never_overloaded_for_waits_that_do_not_know_the_load():
    before = ombm.settings().load_aware
    assert isinstance(_native.overloaded(), bool)
    ombm.configure(load_aware=False)
    try:
        assert _native.overloaded() is False
    finally:
        ombm.configure(load_aware=before)
