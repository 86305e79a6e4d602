"""What the frame checksum (CRC32C, ``_native/crc32c.c``; paper §4) detects, proved for frames up
to the largest RPC slot, and the proof tested on the real frame check (``_native.frame_decode``).

The proof, the standard way. A CRC is linear: for messages of one length, ``crc(m ^ e) ==
crc(m) ^ crc0(e)`` where ``crc0`` is the CRC without its initial value and final XOR. The frame
check compares the CRC of ``frame[:-8]`` with the u32 stored after it (its u64's high half must be
zero), so read the frame's first ``len - 4`` bytes as one codeword polynomial over GF(2): bit ``b``
of byte ``j`` (bit 0 first, as the CRC reads them) is the coefficient of ``x^D``,
``D = 8 * (len - 4) - 1 - (8 * j + b)``, the stored CRC taking ``D < 32``. An error pattern ``E``
on the codeword goes unnoticed iff P divides E, i.e. iff the XOR of the syndromes ``x^D mod P`` of
its bits is 0. So:

* every 1-bit error is detected iff every ``x^D mod P`` is nonzero, every 2-bit error iff they
  are pairwise distinct: computed here for every D of the largest frame (about a million, one
  multiply-by-x each), which covers every shorter frame too (its D are a prefix);
* every burst of at most 32 bits, ``E = x^k * g`` with ``deg g < 32`` and ``g(0) = 1``, is
  detected because P has degree 32 and constant term 1 (so P is prime to x and cannot divide g);
  in particular, any damage within 4 consecutive bytes;
* every error of an odd number of bits, because ``x + 1`` divides P (P(1) = 0);
* an error in the stored u64's high half makes it nonzero: rejected by the comparison itself.

That the model is the implementation is tested too: the syndromes predict the native CRC's change
bit for bit, and an error that is a multiple of P (weight 18) is *accepted*, as the model says.
"""

from __future__ import annotations

import random

import crc32c as icrar  # an independent, well-kept implementation (ICRAR, PyPI: crc32c)
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ombm import _native
from ombm.rpc.slots import DEFAULT_SLOT_SIZE
from ombm.transport import wire
from ombm.transport.wire import TRAILER_SIZE, FrameError, Kind

P = (1 << 32) | 0x1EDC6F41      # the Castagnoli polynomial, bit d = coefficient of x^d
MAX_PAYLOAD = DEFAULT_SLOT_SIZE  # the largest RPC slot's worth of payload (frames up to 128 KiB + trailer)
MAX_FRAME = MAX_PAYLOAD + TRAILER_SIZE
CODEWORD_BITS = 8 * (MAX_FRAME - 4)  # frame[:-8] and the stored CRC: degrees 0 .. CODEWORD_BITS - 1
SUMS = [_native.checksum, _native.checksum_table]


def reflect32(v: int) -> int:
    return int(f"{v:032b}"[::-1], 2)


def degree(frame_len: int, bit: int) -> int:
    """The codeword degree of bit ``bit`` (byte bit // 8, bit bit % 8) of a frame of frame_len bytes."""
    return 8 * (frame_len - 4) - 1 - bit


@pytest.fixture(scope="module")
def syndromes() -> np.ndarray:
    """x^D mod P for every D of the largest frame, as uint32 (bit d = coefficient of x^d)."""
    out = np.empty(CODEWORD_BITS, dtype=np.uint32)
    r, top = 1, 1 << 32
    for d in range(CODEWORD_BITS):
        out[d] = r
        r <<= 1
        if r & top:
            r ^= P
    return out


def test_the_polynomial_has_the_structure_the_proof_uses():
    assert P.bit_length() - 1 == 32       # degree 32
    assert P & 1                          # constant term 1: P is prime to x
    assert bin(P).count("1") % 2 == 0     # P(1) = 0: x + 1 divides P
    assert reflect32(P & 0xFFFFFFFF) == 0x82F63B78  # the implementation's reversed form


def test_every_one_and_two_bit_error_in_the_largest_frame_is_detected(syndromes):
    assert CODEWORD_BITS > 8 * DEFAULT_SLOT_SIZE
    assert syndromes.min() > 0                         # 1 bit: no syndrome is zero
    ordered = np.sort(syndromes)
    assert bool(np.all(ordered[1:] != ordered[:-1]))   # 2 bits: no two are equal


def test_the_syndromes_are_the_native_crcs_change(syndromes):
    """The model is the implementation: flipping one bit changes the native CRC by its syndrome."""
    rng = random.Random(11)
    for _ in range(400):
        length = rng.choice([1, 2, 9, 100, 1072, rng.randrange(1, MAX_FRAME - 8)])
        message = rng.randbytes(length)
        bit = rng.randrange(8 * length)
        flipped = bytearray(message)
        flipped[bit // 8] ^= 1 << (bit % 8)
        expected = reflect32(int(syndromes[degree(length + 8, bit)]))
        for crc in SUMS:
            assert crc(message) ^ crc(flipped) == expected


def frame_of(rng: random.Random, size: int) -> bytearray:
    return bytearray(wire.encode(Kind.CALL, rng.getrandbits(64), rng.getrandbits(64), rng.randbytes(size)))


def flip(frame: bytearray, bits) -> None:
    for bit in bits:
        frame[bit // 8] ^= 1 << (bit % 8)


def test_a_multiple_of_the_polynomial_is_accepted_as_the_model_says():
    """The check can fail: an error pattern P * x^k changes the payload and passes the frame check."""
    rng = random.Random(3)
    frame = frame_of(rng, 4096)
    original = bytes(frame)
    k = 8 * 1000  # the pattern's lowest degree, inside the payload
    bits = [8 * (len(frame) - 4) - 1 - (k + d) for d in range(33) if P >> d & 1]
    flip(frame, bits)
    payload = wire.decode(frame).payload
    assert payload != original[:4096]


# ---- the real frame check, on random frames up to the largest slot

sizes = st.one_of(st.integers(0, 300), st.integers(0, MAX_PAYLOAD), st.just(MAX_PAYLOAD))


@settings(max_examples=150, deadline=None)
@given(sizes, st.integers(0, 2**32), st.data())
def test_random_one_and_two_bit_errors_are_rejected(size, seed, data):
    rng = random.Random(seed)
    frame = frame_of(rng, size)
    nbits = 8 * len(frame)
    first = data.draw(st.integers(0, nbits - 1))
    second = data.draw(st.one_of(st.none(), st.integers(0, nbits - 1).filter(lambda b: b != first)))
    flip(frame, [first] if second is None else [first, second])
    with pytest.raises(FrameError):
        wire.decode(frame)


@settings(max_examples=200, deadline=None)
@given(sizes, st.integers(0, 2**32), st.integers(1, 32), st.data())
def test_random_bursts_up_to_32_bits_are_rejected(size, seed, length, data):
    """A burst: bits ``start .. start + length - 1`` in the order the CRC reads them, the first and
    last flipped, any in between."""
    rng = random.Random(seed)
    frame = frame_of(rng, size)
    start = data.draw(st.integers(0, 8 * len(frame) - length))
    middle = rng.getrandbits(max(0, length - 2))
    pattern = 1 | (middle << 1) | (1 << (length - 1))
    flip(frame, [start + i for i in range(length) if pattern >> i & 1])
    with pytest.raises(FrameError):
        wire.decode(frame)


# ---- agreement with an independent implementation

@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(0, 4096), st.integers(0, MAX_FRAME)), st.integers(0, 15), st.integers(0, 2**32),
       st.integers(0, 2**32 - 1))
def test_agrees_with_the_icrar_crc32c(size, offset, seed, start):
    rng = random.Random(seed)
    buffer = bytearray(rng.randbytes(offset + size))
    view = memoryview(buffer)[offset:]
    expected = icrar.crc32c(bytes(view))
    for crc in SUMS:
        assert crc(view) == expected
        assert crc(view, start) == icrar.crc32c(bytes(view), start)  # continued
    out = bytearray(size + 16)
    assert _native.copy_checksum(memoryview(out)[(offset * 5 + 3) % 16:], view) == expected
    assert out[(offset * 5 + 3) % 16:][:size] == view
