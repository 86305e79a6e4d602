"""The frame checksum, CRC32C (``_native/crc32c.c``; paper §4, the checksum folded into the copy):
the standard's test vectors, every implementation, every alignment and length up to 300, the
chosen implementation, continuation, and the frame check on the table path too.

What it detects is proved in ``tests/property/test_crc32c_props.py``.
"""

from __future__ import annotations

import os
import platform

import pytest

from ombm import _native
from ombm.transport import wire
from ombm.transport.wire import FrameError, Kind

POLY_REVERSED = 0x82F63B78  # 0x1EDC6F41, bit 0 first

# RFC 3720 (iSCSI) B.4, and the check value of the CRC catalogue ("123456789")
VECTORS = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
]


def reference(data: bytes, crc: int = 0) -> int:
    """CRC32C one bit at a time, from its definition: the model the native code must match."""
    c = crc ^ 0xFFFFFFFF
    for byte in data:
        c ^= byte
        for _ in range(8):
            c = (c >> 1) ^ POLY_REVERSED if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def copy_sum(data: bytes, at: int) -> int:
    """copy_checksum from a source at offset ``at`` to a destination at another alignment; checks the copy."""
    src = bytearray(at) + data
    dst = bytearray(len(data) + 16)
    crc = _native.copy_checksum(memoryview(dst)[(at * 3 + 5) % 8:], memoryview(src)[at:])
    assert bytes(dst[(at * 3 + 5) % 8:][:len(data)]) == data
    return crc


SUMS = {
    "checksum": lambda data, at: _native.checksum(memoryview(bytearray(at) + data)[at:]),
    "checksum_table": lambda data, at: _native.checksum_table(memoryview(bytearray(at) + data)[at:]),
    "copy_checksum": copy_sum,
}


@pytest.mark.parametrize("name", SUMS)
@pytest.mark.parametrize("data,expected", VECTORS)
def test_the_standard_vectors_at_every_alignment(name, data, expected):
    assert reference(data) == expected  # the reference is the standard's CRC
    for at in range(16):
        assert SUMS[name](data, at) == expected, (name, at)


@pytest.mark.parametrize("name", SUMS)
def test_every_length_to_300_at_every_alignment(name):
    data = os.urandom(300)
    for length in range(301):
        expected = reference(data[:length])
        for at in range(8):
            assert SUMS[name](data[:length], at) == expected, (name, length, at)


def test_a_crc_can_be_continued():
    data = os.urandom(2000)
    whole = _native.checksum(data)
    for cut in (0, 1, 7, 8, 63, 64, 255, 769, 1999, 2000):
        assert _native.checksum(data[cut:], _native.checksum(data[:cut])) == whole
        assert _native.checksum_table(data[cut:], _native.checksum_table(data[:cut])) == whole
    assert _native.checksum(b"", 0x12345678) == 0x12345678


@pytest.mark.parametrize("bad", [-1, 2**32, 2**64])
def test_a_continued_crc_is_32_bits(bad):
    with pytest.raises(ValueError):
        _native.checksum(b"x", bad)
    with pytest.raises(TypeError):
        _native.checksum(b"x", "0")


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return {word for line in f if line.startswith(("flags", "Features")) for word in line.split(":", 1)[1].split()}


def test_the_hardware_instruction_is_used_where_there_is_one():
    flags, machine = cpu_flags(), platform.machine()
    if machine == "x86_64" and "sse4_2" in flags:  # long runs folded by carry-less multiplies where there are
        expected = ("sse4.2+vpclmul" if {"pclmulqdq", "avx2", "vpclmulqdq"} <= flags else
                    "sse4.2+pclmul" if "pclmulqdq" in flags else "sse4.2")
    elif machine == "aarch64" and "crc32" in flags:
        expected = "armv8-crc"
    else:
        expected = "table"
    if os.environ.get("OMBM_CRC32C") == "table":
        expected = "table"
    assert _native.CRC32C_IMPL == expected


@pytest.mark.parametrize("forced", ["sse4.2", "pclmul"])
def test_each_x86_implementation_agrees_with_the_table_when_forced(procs, forced):
    """OMBM_CRC32C=sse4.2 (the crc32 instruction alone) and =pclmul (no 256-bit multiplies): the same
    CRCs as the table around every block and threshold size, copied and continued."""
    if platform.machine() != "x86_64" or "sse4_2" not in cpu_flags():
        pytest.skip("no SSE4.2 here")
    code = """
import os
from ombm import _native
print(_native.CRC32C_IMPL)
for n in [*range(0, 300), 511, 512, 767, 768, 1023, 1024, 1025, 1039, 1040, 1151, 1152, 1153, 4096, 65537]:
    data = os.urandom(n)
    for start in (0, 0x89ABCDEF):
        assert _native.checksum(data, start) == _native.checksum_table(data, start), (n, start)
    out = bytearray(n)
    assert _native.copy_checksum(out, data) == _native.checksum_table(data) and out == data, n
print("agree")
"""
    run = procs.python(code, env={"OMBM_CRC32C": forced})
    assert run.returncode == 0, run.stderr
    impl, verdict = run.stdout.split()
    assert verdict == "agree"
    assert impl in ("sse4.2", "sse4.2+pclmul") and (forced == "pclmul" or impl == "sse4.2")


def test_the_table_runs_every_frame_path_when_forced(procs):
    """OMBM_CRC32C=table: the frame check, frame writing and the stream seal on the portable table."""
    code = """
from ombm import _native
from ombm.transport import wire
from ombm.transport.stream_protocol import seal, unseal
assert _native.CRC32C_IMPL == "table", _native.CRC32C_IMPL
assert _native.checksum(b"123456789") == 0xE3069283
frame = bytearray(wire.encode(wire.Kind.CALL, 1, 2, bytes(range(256)) * 300))
assert wire.decode(frame).payload == bytes(range(256)) * 300
frame[7] ^= 0x80; frame[23] ^= 0x80
try:
    wire.decode(frame)
except wire.FrameError:
    print("rejected")
"""
    run = procs.python(code, env={"OMBM_CRC32C": "table"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["rejected"]


def test_the_checksum_field_is_the_crc_with_a_zero_high_half():
    payload = os.urandom(1000)
    frame = wire.encode(Kind.REPLY, 5, 6, payload)
    assert frame[-4:] == bytes(4)
    assert int.from_bytes(frame[-8:-4], "little") == reference(frame[:-8])
    for bit in range(32):  # any bit of the high half set: rejected
        damaged = bytearray(frame)
        damaged[-4 + bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameError):
            wire.decode(damaged)


def test_the_old_checksums_blind_spot_is_caught():
    """Bit 63 of words 0 and 2 flipped together: the 64-bit Fletcher-like sum wrapped and took it."""
    for payload in (bytes(24), os.urandom(24), os.urandom(4096)):
        frame = bytearray(wire.encode(Kind.CALL, 1, 1, payload))
        frame[7] ^= 0x80
        frame[23] ^= 0x80
        with pytest.raises(FrameError):
            wire.decode(frame)
