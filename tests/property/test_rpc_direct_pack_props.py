"""The lanes' own packing of a call or a reply (``_native.pack_direct``, lane.c ``marshal_pack_direct``,
issue 13 item 4): byte for byte what the Python encoders make, whenever the lanes pack it themselves.

* A call ``[method, [args...], {}]`` or a reply ``[0, result]`` whose arguments (or result) are
  buffers, None, bools, ints, floats and strs, around every msgpack length and width boundary:
  packed by the lanes (never left to the packer) into exactly ``marshal.encode_call`` /
  ``encode_result``'s bytes.
* Anything else (a container, a tuple, an int beyond 64 bits, a lone surrogate, a non-contiguous
  memoryview, keyword arguments) is either left to the packer (None) or, beside a buffer of
  ``SPLIT_MIN`` bytes or more, packed to the same bytes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ombm import _native
from ombm.rpc import marshal

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
