"""Bridge datagrams (ombm.transport.datagram, ombm.transport.updates): layout, validation,
authentication, the replay window, cutting, packing and reassembling updates. No socket, no clock."""

from __future__ import annotations

import struct

import msgpack
import pytest

from ombm import DatagramError, FrameError
from ombm.transport import datagram as dg
from ombm.transport.datagram import Kind, ReplayWindow, Sealer, decode, pack_entry
from ombm.transport.updates import Assembler, Packer, cut

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def update(sealer: Sealer, *entries: bytes, now_us: int = 1) -> bytes:
    return sealer.seal(Kind.UPDATE, b"".join(entries), len(entries), now_us)


def reseal(data: bytes, key: bytes | None) -> bytes:
    """``data`` with its body changed by the caller: a fresh, valid trailer over it."""
    trailer = dg.MAC_SIZE if key else dg.CRC_SIZE
    body = data[:-trailer]
    if key:
        return body + dg._mac(key, body)
    from ombm._native import checksum
    return body + struct.pack("<I", checksum(body))


@pytest.mark.parametrize("key", [None, KEY])
def test_an_update_round_trips(key):
    sealer = Sealer(0xABCDEF, key)
    data = update(sealer, pack_entry(7, 4096, 0, 9, 0, 2, True, b"abc"), pack_entry(7, 4099, 0, 9, 1, 2, True, b"d"))
    got = decode(data, key)
    assert (got.kind, got.sender, got.seq) == (Kind.UPDATE, 0xABCDEF, 1)
    assert [(e.key, e.offset, e.base, e.tag, e.part, e.parts, e.full, bytes(e.data)) for e in got.entries] == [
        (7, 4096, 0, 9, 0, 2, True, b"abc"), (7, 4099, 0, 9, 1, 2, True, b"d")]
    assert len(data) == dg.HEADER_SIZE + 2 * dg.ENTRY_SIZE + 4 + sealer.trailer


@pytest.mark.parametrize("kind, body", [
    (Kind.LIST, {"nonce": 1}),
    (Kind.EXPORTS, {"nonce": 2, "names": ["a", "video"]}),
    (Kind.IMPORT, {"nonce": 3, "name": "video"}),
    (Kind.IMPORT_REPLY, {"nonce": 4, "name": "video", "key": 2**63, "size": 4096, "unit": 64, "mode": 1,
                         "sow": True}),
    (Kind.IMPORT_REPLY, {"nonce": 5, "name": "video", "error": "not exported", "why": "not_found"}),
    (Kind.OFFER, {"nonce": 6, "name": "req-1", "key": 3, "size": 4 << 20, "unit": 128 << 10, "mode": 1,
                  "sow": True}),
    (Kind.OFFER_REPLY, {"nonce": 6, "name": "req-1", "local": "req-1.at.10.0.0.2_7002"}),
    (Kind.OFFER_REPLY, {"nonce": 6, "name": "req-1", "error": "no room"}),
    (Kind.RESYNC, {"key": 9, "units": [0, 5, 2**40]}),
    (Kind.BYE, {"keys": []}),
    (Kind.LOCATE, {"nonce": 7, "name": "rpc-calc"}),
    (Kind.LOCATED, {"nonce": 7, "name": "rpc-calc"}),
    (Kind.PING, {"keys": [1, 2**64 - 1]}),
    (Kind.PONG, {"gone": []}),
    (Kind.PROBE, {"nonce": 8, "pad": bytes(1000)}),
    (Kind.PROBED, {"nonce": 8}),
])
@pytest.mark.parametrize("key", [None, KEY])
def test_control_bodies_round_trip(kind, body, key):
    got = decode(Sealer(1, key).control(kind, body, 10), key)
    assert (got.kind, got.body, got.entries) == (kind, body, ())


def test_sequence_numbers_increase_and_follow_the_clock():
    sealer = Sealer(1)
    seqs = [decode(sealer.control(Kind.LIST, {"nonce": 0}, now)).seq for now in (100, 100, 50, 1000)]
    assert seqs == [100, 101, 102, 1000]


def test_a_datagram_error_is_a_frame_error_with_a_reason():
    with pytest.raises(FrameError) as info:
        decode(b"\0" * 40)
    assert isinstance(info.value, DatagramError) and isinstance(info.value, ValueError)
    assert info.value.reason == "malformed"


def good(key=None) -> bytes:
    return update(Sealer(1, key), pack_entry(7, 0, 0, 9, 0, 1, True, b"abcd"))


def patched(data: bytes, at: int, fmt: str, value: int, key=None) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, at, value)
    return reseal(bytes(buf), key)


E = dg.HEADER_SIZE  # where the first entry starts


@pytest.mark.parametrize("data, why", [
    (b"", "empty"),
    (b"\0" * (dg.HEADER_SIZE + 3), "too short"),
    (patched(good(), 0, "<H", 0x1234), "magic"),
    (patched(good(), 2, "<B", 2), "version"),
    (patched(good(), 3, "<B", 99), "kind"),
    (patched(good(), 4, "<H", 0x2), "flags"),
    (patched(good(), 6, "<H", 0), "no entries"),
    (patched(good(), 6, "<H", 2), "an entry missing"),
    (patched(good(), 6, "<H", 60000), "count beyond the size"),
    (patched(good(), E + 24, "<H", 5), "length past the end"),
    (patched(good(), E + 24, "<H", 3), "trailing bytes"),
    (patched(good(), E + 24, "<H", 0), "zero length"),
    (patched(good(), E + 26, "<H", 1), "part beyond parts"),
    (patched(good(), E + 28, "<H", 0), "zero parts"),
    (patched(good(), E + 30, "<H", 2), "entry flags"),
    (patched(good(), E + 20, "<I", 0), "tag 0"),
    (patched(good(), E + 16, "<I", 5), "a full entry with a base"),
    (patched(good(), E + 30, "<H", 0), "a delta without a base"),
    (patched(good(), E + 8, "<Q", 2**64 - 2), "offset + length overflows"),
    (good()[:-1] + bytes([good()[-1] ^ 1]), "bad CRC"),
    (good() + b"\0", "an extra byte (bad CRC)"),
])
def test_malformed_datagrams_are_refused(data, why):
    with pytest.raises(DatagramError) as info:
        decode(data)
    assert info.value.reason == "malformed", why


def control(kind: int, body: object, count: int = 0) -> bytes:
    raw = msgpack.packb(body, use_bin_type=True) if not isinstance(body, bytes) else body
    head = struct.pack("<HBBHHQQ", dg.MAGIC, dg.VERSION, kind, 0, count, 1, 1)
    return reseal(head + raw + b"\0\0\0\0", None)


@pytest.mark.parametrize("data", [
    control(Kind.LIST, {"nonce": 1}, count=1),                      # a control kind with entries
    control(Kind.LIST, b"\xc1"),                                    # not msgpack
    control(Kind.LIST, msgpack.packb({"nonce": 1}) + b"\0"),        # extra data
    control(Kind.LIST, [1]),                                        # not a map
    control(Kind.LIST, {}),                                         # missing field
    control(Kind.LIST, {"nonce": -1}),                              # out of range
    control(Kind.LIST, {"nonce": True}),                            # a bool is no int
    control(Kind.LIST, {"nonce": 1, "more": 2}),                    # unknown field
    control(Kind.IMPORT, {"nonce": 1, "name": ""}),
    control(Kind.IMPORT, {"nonce": 1, "name": "a\nb"}),
    control(Kind.IMPORT, {"nonce": 1, "name": b"video"}),
    control(Kind.EXPORTS, {"nonce": 1, "names": ["a"] * 257}),
    control(Kind.RESYNC, {"key": 1, "units": [1.5]}),
    control(Kind.IMPORT_REPLY, {"nonce": 1, "name": "v"}),          # neither geometry nor error
    control(Kind.IMPORT_REPLY, {"nonce": 1, "name": "v", "key": 1, "size": 64, "unit": 64, "mode": 1, "sow": True,
                                "error": "both"}),
    control(Kind.IMPORT_REPLY, {"nonce": 1, "name": "v", "key": 1, "size": 0, "unit": 64, "mode": 1, "sow": True}),
    control(Kind.IMPORT_REPLY, {"nonce": 1, "name": "v", "key": 1, "size": 64, "unit": 64, "mode": 3, "sow": True}),
    control(Kind.OFFER_REPLY, {"nonce": 1, "name": "v", "local": "a", "error": "both"}),
    control(Kind.OFFER_REPLY, {"nonce": 1, "name": "v"}),
    control(Kind.OFFER, {"nonce": 1, "name": "v", "key": 1, "size": 64, "unit": 64, "mode": 1}),  # no sow
    control(Kind.BYE, {"keys": None}),
    control(Kind.BYE, {1: []}),                                     # a key that is no str
    control(Kind.LOCATE, {"nonce": 1}),                             # no name
    control(Kind.PING, {"keys": [-1]}),
    control(Kind.PONG, {"gone": [1] * 257}),
    control(Kind.PROBE, {"nonce": 1, "pad": b"\0\1"}),              # padding that is not zeros
    control(Kind.PROBE, {"nonce": 1, "pad": "  "}),                 # padding that is no bytes
    control(Kind.PROBED, {"nonce": 1, "pad": b""}),                 # bytes where no kind but PROBE has them
])
def test_malformed_control_bodies_are_refused(data):
    with pytest.raises(DatagramError) as info:
        decode(data)
    assert info.value.reason == "malformed"


def test_a_mac_is_checked_over_header_and_body():
    data = good(KEY)
    assert decode(data, KEY).entries
    for at in (0, 6, 8, 16, E, E + 8, len(data) - 20, len(data) - 1):  # any byte, header, body or MAC
        bad = bytearray(data)
        bad[at] ^= 0x40
        with pytest.raises(DatagramError) as info:
            decode(bytes(bad), KEY)
        assert info.value.reason in ("bad_mac", "malformed")
    with pytest.raises(DatagramError) as info:
        decode(data, OTHER_KEY)
    assert info.value.reason == "bad_mac"


def test_keyed_and_unkeyed_bridges_do_not_hear_each_other():
    for data, key in ((good(KEY), None), (good(None), KEY)):
        with pytest.raises(DatagramError) as info:
            decode(data, key)
        assert info.value.reason == "bad_mac"


def test_a_sealer_refuses_bad_keys_and_bodies():
    for key in (b"short", b"x" * 65, "text" * 8):
        with pytest.raises(ValueError):
            Sealer(1, key)
    with pytest.raises(DatagramError):
        Sealer(1).control(Kind.LIST, {"nonce": "x"}, 1)
    with pytest.raises(ValueError):
        Sealer(1).control(Kind.UPDATE, {}, 1)


# ---- the replay window
def test_the_window_takes_new_numbers_and_refuses_repeats():
    w = ReplayWindow()
    for seq in (10, 12, 11, 75, 74, 20):
        assert w.check(1, seq, 0) == ""
        w.commit(1, seq)
    assert w.check(1, 12, 0) == "replay"          # seen
    assert w.check(1, 75, 0) == "replay"
    assert w.check(1, 11, 0) == "replay"          # 64 behind the top: outside the window
    assert w.check(1, 13, 0) == ""                # inside, never seen
    assert w.check(2, 12, 0) == ""                # another sender
    w.commit(1, 1000)                             # a jump past the window
    assert w.check(1, 999, 0) == "" and w.check(1, 1000, 0) == "replay" and w.check(1, 75, 0) == "replay"


def test_a_new_sender_must_be_near_the_clock_when_ages_count():
    w = ReplayWindow(max_age_us=1_000_000)
    assert w.check(5, 10_000_000, 10_500_000) == ""
    assert w.check(5, 1_000_000, 10_500_000) == "stale"    # recorded long ago
    assert w.check(5, 20_000_000, 10_500_000) == "stale"   # far ahead
    w.commit(5, 10_000_000)
    assert w.check(5, 10_000_001, 99_000_000) == ""       # a known sender: the window alone decides


def test_the_window_keeps_the_most_recent_senders():
    w = ReplayWindow(max_senders=3)
    for sender in range(5):
        w.commit(sender, 100)
    assert w.check(4, 100, 0) == "replay" and w.check(0, 100, 0) == ""  # sender 0 was forgotten
    w.forget(4)
    assert w.check(4, 100, 0) == ""


# ---- cutting, packing, reassembling
def test_cut_packs_and_reassembles_an_update_in_any_order():
    data = bytes(range(256)) * 20
    entries = cut(3, [(100, data)], 7, 8, False, room=1000)
    assert len(entries) == 6
    packer = Packer(dg.DEFAULT_MTU, dg.CRC_SIZE)
    bodies = [b for b in (packer.add(e) for e in entries) if b] + [packer.take()]
    sealer = Sealer(1)
    datagrams = [decode(sealer.seal(Kind.UPDATE, body, count, 1)) for body, count in bodies]
    assert all(len(sealer.seal(Kind.UPDATE, body, count, 1)) <= dg.DEFAULT_MTU for body, count in bodies)
    parts = [e for d in reversed(datagrams) for e in d.entries]
    assembler = Assembler()
    results = [assembler.add(1, e, 0.0) for e in parts]
    assert results[:-1] == [None] * (len(parts) - 1)
    done = results[-1]
    assert (done.key, done.base, done.tag, done.full) == (3, 7, 8, False)
    assert b"".join(bytes(d) for _, d in done.ranges) == data and done.ranges[0][0] == 100
    assert assembler.pending == 0


def entry(part: int, parts: int, offset: int, data: bytes = b"x", tag: int = 9, base: int = 1) -> dg.Entry:
    return dg.Entry(1, offset, base, tag, part, parts, False, data)


def test_the_assembler_drops_what_does_not_add_up():
    a = Assembler()
    assert a.add(1, entry(0, 2, 0), 0.0) is None
    assert a.add(1, entry(0, 2, 0), 0.0) is None and a.duplicates == 1
    assert a.add(1, entry(1, 3, 1), 0.0) is None and a.inconsistent == 1 and a.pending == 0  # parts disagree
    assert a.add(1, entry(0, 2, 10, b"abc"), 0.0) is None
    assert a.add(1, entry(1, 2, 11), 0.0) is None and a.inconsistent == 2  # ranges overlap
    assert a.add(1, entry(0, 2, 0), 1.0) is None
    assert a.expire(1.4) == 0 and a.expire(1.6) == 1 and a.incomplete == 1


def test_the_assembler_is_bounded():
    a = Assembler(max_updates=4, max_bytes=100)
    for tag in range(1, 10):
        a.add(1, entry(0, 2, 0, tag=tag), 0.0)
    assert a.pending == 4 and a.incomplete == 5
    a.add(1, entry(0, 2, 0, b"y" * 99, tag=50), 0.0)
    assert a.pending == 2 and a.incomplete == 8  # 1 byte + 99 bytes fit in 100
    a.forget(1)
    assert a.pending == 0 and a.next_expiry_s is None


def test_cut_refuses_an_update_of_too_many_parts():
    with pytest.raises(ValueError):
        cut(1, [(0, b"x" * 70000)], 0, 1, True, room=1)
    with pytest.raises(ValueError):
        Packer(dg.HEADER_SIZE + dg.ENTRY_SIZE + 4, dg.CRC_SIZE)


@pytest.mark.parametrize("key", [None, KEY])
def test_a_probe_is_the_size_asked_or_one_byte_less(key):
    sealer = Sealer(1, key)
    for size in range(dg.MIN_MTU, 1600):
        data = sealer.probe(2**63, size, 10)
        assert size - 1 <= len(data) <= size and decode(data, key).kind is Kind.PROBE
    assert len(sealer.probe(1, dg.MAX_MTU, 10)) == dg.MAX_MTU
    with pytest.raises(ValueError):
        sealer.probe(1, dg.MAX_MTU + 1, 10)
