"""Frames (ombm.transport.wire): encoding, and rejection of every damaged frame."""

import struct
from dataclasses import FrozenInstanceError

import pytest

from ombm._native import checksum
from ombm.transport import wire
from ombm.transport.wire import TRAILER_SIZE, Frame, FrameError, Kind, decode, encode

HEAD = struct.Struct("<QQQIIHHBBH")


def raw_frame(payload=b"", *, connection_id=1, message_id=2, ack=0, plen=None, credit=0,
              frag_index=0, frag_count=1, kind=Kind.CALL, flags=0, magic=wire.MAGIC):
    """A frame with arbitrary (possibly invalid) fields and a *correct* checksum."""
    body = payload + HEAD.pack(connection_id, message_id, ack,
                               len(payload) if plen is None else plen, credit,
                               frag_index, frag_count, kind, flags, magic)
    return body + struct.pack("<Q", checksum(body))


def test_trailer_size_is_a_multiple_of_8_and_at_most_64():
    assert TRAILER_SIZE % 8 == 0 and TRAILER_SIZE <= 64


def test_round_trip_all_fields():
    f = encode(Kind.REPLY, 2**64 - 1, 12345, b"hello", frag_index=3, frag_count=9,
               ack=2**63, credit=77)
    assert len(f) == 5 + TRAILER_SIZE
    frame = decode(memoryview(f))
    assert frame == Frame(Kind.REPLY, 2**64 - 1, 12345, 3, 9, 2**63, b"hello", 77)
    assert type(frame.kind) is Kind
    assert type(frame.payload) is bytearray


def test_decode_fields_matches_decode():
    f = encode(Kind.DATA, 5, 6, b"abc", frag_index=1, frag_count=2, ack=7, credit=8)
    fr = decode(f)
    assert wire.decode_fields(f) == (fr.kind, fr.connection_id, fr.message_id, fr.frag_index,
                                     fr.frag_count, fr.ack, fr.payload, fr.credit)


def test_empty_payload_and_every_kind():
    for kind in Kind:
        assert decode(encode(kind, 1, 2)).kind is kind


def test_payload_may_be_any_buffer():
    for payload in (bytearray(b"xyz"), memoryview(b"xyz"), memoryview(b"..xyz")[2:]):
        assert decode(encode(Kind.CALL, 1, 1, payload)).payload == b"xyz"
    arr = memoryview(bytes(range(8))).cast("I")   # non-byte items count as their bytes
    assert decode(encode(Kind.CALL, 1, 1, arr)).payload == bytes(range(8))


def test_frame_is_frozen():
    frame = decode(encode(Kind.CALL, 1, 1, b"x"))
    with pytest.raises(FrozenInstanceError):
        frame.message_id = 3


def test_decode_copies_payload_out_of_the_buffer():
    buf = bytearray(encode(Kind.CALL, 1, 1, b"abcd"))
    frame = decode(memoryview(buf))
    buf[0:4] = b"ZZZZ"
    assert frame.payload == b"abcd"


def test_frame_ends_at_end_of_view_garbage_before_is_ignored():
    f = encode(Kind.CALL, 1, 1, b"payload")
    assert decode(memoryview(b"\xff" * 100 + f)).payload == b"payload"


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 63, 64, 1000])
def test_every_single_byte_corruption_is_detected(size):
    frame = encode(Kind.CALL, 0x1122334455667788, 99, (bytes(range(256)) * 4)[:size],
                   frag_index=1, frag_count=3, ack=42, credit=5)
    buf = bytearray(frame)
    positions = range(len(buf)) if size <= 64 else list(range(0, len(buf), 37)) + list(
        range(len(buf) - TRAILER_SIZE, len(buf)))
    for pos in positions:
        original = buf[pos]
        for delta in range(1, 256):
            buf[pos] = original ^ delta
            with pytest.raises(FrameError):
                decode(memoryview(buf))
        buf[pos] = original
    assert decode(memoryview(buf)).payload == frame[:size]


def test_every_truncation_is_rejected():
    frame = encode(Kind.CALL, 1, 2, b"0123456789abcdef")
    for cut in range(len(frame)):
        with pytest.raises(FrameError):
            decode(memoryview(frame)[:cut])      # lost tail: trailer misplaced
        if cut:
            with pytest.raises(FrameError):
                decode(memoryview(frame)[cut:])  # lost head: payload overruns


def test_zeroed_slot_is_rejected():
    for n in (TRAILER_SIZE, 64, 4096):
        with pytest.raises(FrameError):
            decode(memoryview(bytearray(n)))


@pytest.mark.parametrize("plen", [49, 2**16, 2**31, 2**32 - 1])
def test_absurd_payload_length_is_rejected_before_any_copy(plen):
    with pytest.raises(FrameError, match="overruns"):
        decode(raw_frame(plen=plen))


@pytest.mark.parametrize("fields", [
    dict(kind=0), dict(kind=9), dict(kind=255), dict(flags=1), dict(magic=0),
    dict(magic=wire.MAGIC + 1), dict(frag_index=1, frag_count=1), dict(frag_count=0),
    dict(plen=3),  # shorter than the real payload: trailer fields disagree with the copy
])
def test_well_checksummed_but_malformed_trailer_is_rejected(fields):
    with pytest.raises(FrameError):
        decode(raw_frame(b"abcdef", **fields))


def test_raw_frame_helper_builds_valid_frames():
    assert decode(raw_frame(b"abc", kind=Kind.ACK)).payload == b"abc"


def test_torn_frame_from_two_writes_is_rejected():
    old = encode(Kind.CALL, 1, 1, b"A" * 64)
    new = encode(Kind.CALL, 1, 2, b"B" * 64)
    torn = [old[:cut] + new[cut:] for cut in range(1, len(old))]
    # a cut in the checksum's high half (zero in both) leaves the old frame whole: not torn
    torn = [frame for frame in torn if frame not in (old, new)]
    assert len(torn) == len(old) - 1 - 4
    for frame in torn:
        with pytest.raises(FrameError):
            decode(frame)


def test_frame_error_is_a_value_error():
    assert issubclass(FrameError, ValueError)


def test_encode_into_ends_at_end_and_returns_start():
    buf = bytearray(200)
    start = wire.encode_into(buf, 150, Kind.ONEWAY, 3, 4, b"data", ack=1)
    assert start == 150 - 4 - TRAILER_SIZE
    assert buf[150:] == bytes(50) and buf[:start] == bytes(start)
    assert bytes(buf[start:150]) == encode(Kind.ONEWAY, 3, 4, b"data", ack=1)
    assert decode(memoryview(buf)[:150]).payload == b"data"


def test_encode_into_refuses_to_write_outside_the_buffer():
    buf = bytearray(60)
    with pytest.raises(ValueError):
        wire.encode_into(buf, 60, Kind.CALL, 1, 1, b"x" * 13)
    with pytest.raises(ValueError):
        wire.encode_into(buf, 61, Kind.CALL, 1, 1, b"")
    assert buf == bytearray(60)


@pytest.mark.parametrize("kwargs", [
    dict(frag_index=1, frag_count=1), dict(frag_count=0), dict(frag_count=wire.MAX_FRAGMENTS + 1),
    dict(ack=-1), dict(ack=2**64), dict(credit=2**32), dict(credit=-1),
])
def test_encode_rejects_bad_fields(kwargs):
    with pytest.raises(ValueError):
        encode(Kind.CALL, 1, 1, b"", **kwargs)


def test_encode_rejects_bad_ids_and_kinds():
    for args in ((Kind.CALL, -1, 1), (Kind.CALL, 1, 2**64), (0, 1, 1), (99, 1, 1)):
        with pytest.raises(ValueError):
            encode(*args)


def test_peek_kind():
    assert wire.peek_kind(encode(Kind.CREDIT, 1, 2, b"xyz")) == Kind.CREDIT
    assert wire.peek_kind(b"short") is None
