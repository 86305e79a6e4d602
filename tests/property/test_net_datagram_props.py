"""Bridge datagrams (ombm.transport.datagram, .updates), generated: round trips, damage always
detected, any bytes give a Datagram or a DatagramError, updates reassembled from their parts in any
order, and the replay window against a plain model."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ombm import DatagramError
from ombm._native import checksum
from ombm.transport import datagram as dg
from ombm.transport.datagram import Kind, ReplayWindow, Sealer, decode, pack_entry
from ombm.transport.updates import Assembler, Packer, cut

u16, u32, u64 = st.integers(0, 0xFFFF), st.integers(1, 0xFFFFFFFF), st.integers(0, 2**64 - 1)
keys = st.one_of(st.none(), st.binary(min_size=16, max_size=64))


@st.composite
def entries(draw):
    parts = draw(st.integers(1, 0xFFFF))
    full = draw(st.booleans())
    return (draw(u64), draw(st.integers(0, 2**63)), 0 if full else draw(u32), draw(u32),
            draw(st.integers(0, parts - 1)), parts, full, draw(st.binary(min_size=1, max_size=200)))


@given(keys, u64, st.integers(0, 2**62), st.lists(entries(), min_size=1, max_size=6))
def test_updates_round_trip(key, sender, now_us, items):
    data = Sealer(sender, key).seal(Kind.UPDATE, b"".join(pack_entry(*e) for e in items), len(items), now_us)
    got = decode(data, key)
    assert (got.kind, got.sender, got.seq) == (Kind.UPDATE, sender, max(now_us, 1))
    assert [(e.key, e.offset, e.base, e.tag, e.part, e.parts, e.full, bytes(e.data)) for e in got.entries] == items


@settings(max_examples=300)
@given(keys, st.lists(entries(), min_size=1, max_size=3), st.data())
def test_any_damage_is_detected(key, items, data):
    """Overwrite 1..8 bytes with other values: never a silently different datagram."""
    good = Sealer(5, key).seal(Kind.UPDATE, b"".join(pack_entry(*e) for e in items), len(items), 9)
    buf = bytearray(good)
    for pos in data.draw(st.lists(st.integers(0, len(buf) - 1), min_size=1, max_size=8, unique=True)):
        buf[pos] ^= data.draw(st.integers(1, 255))
    try:
        got = decode(bytes(buf), key)
    except DatagramError:
        return
    raise AssertionError(f"damaged datagram decoded as {got}")


@settings(max_examples=500)
@given(st.binary(max_size=300), keys)
def test_any_bytes_decode_or_raise_datagram_error(data, key):
    try:
        decode(data, key)
    except DatagramError:
        pass


@settings(max_examples=500)
@given(st.integers(0, 255), u16, st.binary(max_size=300), st.sampled_from([None, b"k" * 32]))
def test_any_sealed_body_decodes_or_raises_datagram_error(kind, count, body, key):
    """Past the integrity check (a valid MAC or CRC over whatever header and body): still only DatagramError."""
    data = struct.pack("<HBBHHQQ", dg.MAGIC, dg.VERSION, kind, dg.FLAG_MAC if key else 0, count, 1, 1) + body
    data += dg._mac(key, data) if key else struct.pack("<I", checksum(data))
    try:
        decode(data, key)
    except DatagramError:
        pass


@given(st.binary(min_size=1, max_size=5000), st.integers(1, 1400), st.randoms(use_true_random=False),
       st.integers(0, 2**40))
def test_an_update_reassembles_from_its_parts_in_any_order(payload, room, rng, offset):
    items = cut(3, [(offset, payload)], 0, 77, True, room)
    packer = Packer(dg.MAX_MTU, dg.CRC_SIZE)
    bodies = [b for b in (packer.add(e) for e in items) if b] + [packer.take()]
    parts = [e for body, count in bodies for e in decode(Sealer(1).seal(Kind.UPDATE, body, count, 1)).entries]
    rng.shuffle(parts)
    assembler = Assembler(max_bytes=1 << 20)
    done = [u for u in (assembler.add(9, e, 0.0) for e in parts) if u is not None]
    assert len(done) == 1 and assembler.pending == 0
    assert done[0].ranges[0][0] == offset and b"".join(bytes(d) for _, d in done[0].ranges) == payload
    rng.shuffle(parts)
    if len(parts) > 1:  # without one part, nothing
        assert all(assembler.add(9, e, 0.0) is None for e in parts[1:])


@given(st.lists(st.integers(0, 300), max_size=200))
def test_the_replay_window_matches_a_model(seqs):
    window = ReplayWindow()
    seen: set[int] = set()
    for seq in seqs:
        top = max(seen, default=None)
        new = seq not in seen and (top is None or seq > top - ReplayWindow.SIZE)
        assert (window.check(1, seq, 0) == "") == new
        if new:
            window.commit(1, seq)
            seen.add(seq)
