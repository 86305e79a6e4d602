"""RPC marshalling (ombm.rpc.marshal): nested values round-trip."""

import math

from hypothesis import given
from hypothesis import strategies as st

from ombm.errors import RemoteError
from ombm.rpc.marshal import decode_call, decode_reply, encode_call, encode_result

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text() | st.binary())
buffers = st.binary().flatmap(lambda b: st.sampled_from([b, bytearray(b), memoryview(b)]))
values = st.recursive(
    scalars | buffers,
    lambda inner: (st.lists(inner, max_size=5) | st.lists(inner, max_size=5).map(tuple)
                   | st.dictionaries(st.text(max_size=5) | st.integers()
                                     | st.tuples(st.integers(), st.text(max_size=3)), inner, max_size=5)),
    max_leaves=30)


def expected(value):
    """What the receiver gets back: lists as lists, tuples as tuples, buffers as bytes."""
    if isinstance(value, list):
        return [expected(v) for v in value]
    if isinstance(value, tuple):
        return tuple(expected(v) for v in value)
    if isinstance(value, dict):
        return {k: expected(v) for k, v in value.items()}
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def same(a, b):
    """Equality that also tells 1 from 1.0 and True from 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


@given(values)
def test_result_round_trip(value):
    assert same(decode_reply(encode_result(value)), expected(value))


@given(st.text(), st.lists(values, max_size=4).map(tuple),
       st.dictionaries(st.text(max_size=8), values, max_size=4))
def test_call_round_trip(method, args, kwargs):
    got_method, got_args, got_kwargs = decode_call(encode_call(method, args, kwargs))
    assert got_method == method
    assert type(got_args) is tuple and same(list(got_args), expected(list(args)))
    assert same(got_kwargs, expected(kwargs))


@given(st.binary(max_size=64))
def test_garbage_raises_value_error_only(garbage):
    for decode in (decode_call, decode_reply):
        try:
            decode(garbage)
        except ValueError:
            pass
        except Exception as exc:  # a RemoteError (of any builtin kind) is the only other legitimate outcome
            assert isinstance(exc, RemoteError), repr(exc)
