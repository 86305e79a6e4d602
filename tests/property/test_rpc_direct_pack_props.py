"""The lanes' own packing and unpacking of plain calls and replies (``_native.pack_direct`` and
``unpack_plain``, lane.c, issue 13 item 4): byte for byte what the Python encoders make, and
exactly the objects msgpack makes, whenever the lanes do it themselves.

* A call ``[method, [args...], {}]`` or a reply ``[0, result]`` whose arguments (or result) are
  buffers, None, bools, ints, floats and strs, around every msgpack length and width boundary:
  packed by the lanes (never left to the packer) into exactly ``marshal.encode_call`` /
  ``encode_result``'s bytes.
* Anything else (a container, a tuple, an int beyond 64 bits, a lone surrogate, a non-contiguous
  memoryview, keyword arguments) is either left to the packer (None) or, beside a buffer of
  ``SPLIT_MIN`` bytes or more, packed to the same bytes.
* Unpacking: a plain payload (msgpack's own encodings too: float32, wider ints and lengths than
  needed) comes back as ``msgpack.unpackb`` makes it, with the bin ``frame_split`` took out in
  its place; anything else, truncated, with trailing bytes, bad UTF-8 or arbitrary, is left to
  msgpack (None).
"""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from ombm import _native
from ombm.rpc import marshal
from ombm.transport import wire

BIG = _native.SPLIT_MIN

_EDGES = [0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
          2**64 - 1]
ints = st.one_of(st.integers(-2**63, 2**64 - 1), st.sampled_from(_EDGES + [-e for e in _EDGES if e <= 2**63]),
                 st.sampled_from([-33, -32, -129, -128, -32769, -32768, -2**31 - 1]))
lengths = st.one_of(st.integers(0, 300), st.sampled_from([65535, 65536, 70000]))
blobs = lengths.map(lambda n: bytes([n % 251]) * n).flatmap(
    lambda b: st.sampled_from([b, bytearray(b), memoryview(b)]))
texts = st.one_of(st.text(max_size=40), lengths.map(lambda n: "é" * (n // 2) + "x" * (n % 2)))
natives = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=True), texts, blobs)
others = st.one_of(st.lists(st.integers(), max_size=3), st.tuples(st.integers()),
                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.integers(2**64, 2**70),
                   st.just("a\ud800b"), st.just(memoryview(b"abcdef")[::2]), st.integers(-2**70, -2**63 - 1))


def _direct(message: list) -> bytes | None:
    return _native.pack_direct(marshal.packer(), message)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.lists(natives, max_size=6))
def test_a_call_of_plain_arguments_is_the_encoders_bytes(method, args):
    assert _direct([method, list(args), {}]) == marshal.encode_call(method, tuple(args))


@settings(max_examples=300, deadline=None)
@given(natives)
def test_a_plain_result_is_the_encoders_bytes(value):
    assert _direct([0, value]) == marshal.encode_result(value)


@settings(max_examples=200, deadline=None)
@given(st.lists(natives, max_size=3), others, st.lists(natives, max_size=3), st.booleans())
def test_anything_else_is_the_packers_or_the_same_bytes(before, other, after, with_big):
    args = before + [other] + after + ([b"b" * BIG] if with_big else [])
    got = _direct(["m", args, {}])
    try:
        want = marshal.encode_call("m", tuple(args))
    except (TypeError, ValueError, OverflowError):
        want = None  # (the packer refuses it too: an int beyond 64 bits, a lone surrogate, ...)
    assert got is None or got == want
    if not any(isinstance(a, (bytes, bytearray, memoryview)) and len(a) >= BIG for a in args):
        assert got is None  # the packer's in one call
    assert _direct([0, other]) is None


def test_keyword_arguments_and_other_shapes_are_the_packers():
    assert _direct(["m", [1], {"k": 1}]) is None
    assert _direct([1, "E", "msg", "tb"]) is None
    assert _direct([0, 1, 2]) is None


def test_a_large_payload_is_the_bulk_guards():
    assert _direct(["m", [b"x" * (1 << 17)], {}]) is None
    assert _direct([0, bytearray(1 << 17)]) is None


def _same(a: object, b: object) -> bool:
    """Equal and of the same types all the way down (NaN equal to itself)."""
    if isinstance(a, list):
        return type(b) is list and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return type(a) is type(b) and a == b and (a is not None or b is None)


def _unpacked(payload: bytes) -> object:
    return msgpack.unpackb(payload, ext_hook=marshal._ext_hook_safe, strict_map_key=False)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.lists(natives, max_size=6), natives)
def test_a_plain_payload_unpacks_as_msgpack_does(method, args, value):
    for payload in (marshal.encode_call(method, tuple(args)), marshal.encode_result(value)):
        assert _same(_native.unpack_plain(payload), _unpacked(payload))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(width=32),
                          st.text(max_size=5), st.binary(max_size=5)), max_size=4), st.booleans())
def test_msgpacks_wider_forms_unpack_as_msgpack_does(args, single):
    """A peer's packer may use float32 or a wider int or length than needed: still plain."""
    payload = msgpack.packb(["m", args, {}], use_single_float=single)
    assert _same(_native.unpack_plain(payload), _unpacked(payload))
    wide = bytes([0x93, 0xd9, 1]) + b"m" + bytes([0xdc, 0, 2, 0xcd, 0, 5, 0xc5, 0, 1]) + b"z" + bytes([0x80])
    assert _native.unpack_plain(wide) == ["m", [5, b"z"], {}]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), natives, st.integers(0, 64), st.binary(min_size=1, max_size=4))
def test_anything_else_is_msgpacks(noise, value, cut, tail):
    payload = marshal.encode_result(value)
    for data in (noise, payload[:max(0, len(payload) - 1 - cut)], payload + tail):
        got = _native.unpack_plain(data)
        if got is not None:  # plain only if msgpack reads exactly that
            assert _same(got, _unpacked(data))
    assert _native.unpack_plain(marshal.encode_result([1])) is None
    assert _native.unpack_plain(marshal.encode_call("m", (1,), {"k": 2})) is None
    assert _native.unpack_plain(bytes([0x92, 0, 0xa1, 0xff])) is None  # bad UTF-8: msgpack says why


@settings(max_examples=100, deadline=None)
@given(st.lists(natives.filter(lambda a: not isinstance(a, (bytes, bytearray, memoryview)) or len(a) < BIG),
                max_size=3), st.integers(BIG, BIG + 300))
def test_the_split_bin_is_the_argument(args, n):
    big = bytes([n % 251]) * n
    payload = marshal.encode_call("m", (*args, big))
    env, got_big, at, _ = _native.frame_split(wire.encode(wire.Kind.CALL, 7, 9, payload))
    assert got_big == big
    assert _same(_native.unpack_plain(env, got_big, at), _unpacked(payload))
    assert _native.unpack_plain(env, None, at) is None  # a placeholder with no bin is msgpack's
