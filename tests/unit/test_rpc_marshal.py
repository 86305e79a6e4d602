"""RPC marshalling (ombm.rpc.marshal): what travels, what comes back, what is refused."""

import pickle
import re
import sys

import msgpack
import pytest

from ombm.rpc import marshal
from ombm.rpc.marshal import RemoteError, UnmarshalError, decode_call, decode_reply, encode_call, encode_error, encode_result


def reply(value, **kw):
    return decode_reply(encode_result(value, **kw), **kw)


class Thing:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return isinstance(other, Thing) and other.x == self.x


def test_call_round_trip_args_tuple_kwargs_dict():
    method, args, kwargs = decode_call(encode_call("add", (1, "two", None), {"k": 3.5}))
    assert (method, args, kwargs) == ("add", (1, "two", None), {"k": 3.5})
    assert type(args) is tuple


def test_call_defaults():
    assert decode_call(encode_call("ping")) == ("ping", (), {})


def test_tuples_and_lists_come_back_as_they_went():
    got = reply((1, (2, [3, (4,)]), []))
    assert got == (1, (2, [3, (4,)]), []) and type(got) is tuple and type(got[1][1]) is list
    assert type(got[1][1][1]) is tuple


def test_a_namedtuple_comes_back_a_tuple_and_builtin_subclasses_as_their_builtin():
    import collections
    import enum

    class Colour(enum.IntEnum):
        RED = 3

    Point = collections.namedtuple("Point", "x y")
    got = reply([Point(1, 2), Colour.RED, collections.OrderedDict(a=1), collections.Counter("aa")])
    assert got == [(1, 2), 3, {"a": 1}, {"a": 2}]
    assert [type(v) for v in got] == [tuple, int, dict, dict]


def test_tuple_keys_are_rebuilt():
    assert decode_call(encode_call("f", ({(1, ("a", None)): 2},)))[1] == ({(1, ("a", None)): 2},)
    with pytest.raises(TypeError, match="dict key of type tuple"):
        encode_call("f", ({(1, frozenset()): 2},))


def test_the_call_lanes_message_shape_is_a_list():
    import msgpack

    assert msgpack.unpackb(encode_call("f", (1, (2,)), {"k": 3}), ext_hook=marshal.ext_hook(), strict_map_key=False) \
        == ["f", [1, (2,)], {"k": 3}]
    assert msgpack.unpackb(encode_result((1,)), ext_hook=marshal.ext_hook()) == [0, (1,)]


def test_a_tuple_that_holds_no_array_or_nests_without_end_is_an_unmarshal_error():
    import msgpack

    hostile = msgpack.packb([0, msgpack.ExtType(4, msgpack.packb({"a": 1}))])
    with pytest.raises(UnmarshalError, match="does not hold an array"):
        decode_reply(hostile)
    deep = msgpack.packb([])
    for _ in range(5000):  # far past the recursion limit: each level is a tuple holding the next
        deep = msgpack.packb([msgpack.ExtType(4, deep)])
    with pytest.raises(UnmarshalError, match="nested more than 32 deep"):
        decode_reply(msgpack.packb([0, msgpack.ExtType(4, deep)]))
    assert marshal._nesting.unpacking == 0


def test_tuples_nest_32_deep_and_no_deeper():
    value: object = "innermost"
    for _ in range(marshal.MAX_TUPLE_NESTING):
        value = (value,)
    assert reply(value) == value
    with pytest.raises(TypeError, match="nested more than 32 deep"):
        encode_result((value,))
    assert marshal._nesting.packing == 0


def test_buffers_travel_as_bytes():
    for value in (b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")):
        got = reply(value)
        assert got == b"\x00\xff" and type(got) is bytes
    assert encode_result(memoryview(b"abc")) == encode_result(b"abc")


def test_scalars_and_dicts():
    value = {"a": [None, True, False, -2**63, 2**64 - 1, 1.5, "é"], 7: {"n": {}}}
    assert reply(value) == value


@pytest.mark.parametrize("bad", [{1, 2}, frozenset(), object(), Thing(1), 1j, type, print,
                                 [1, {2}], {"k": object()}])
def test_unsupported_types_raise_type_error_naming_the_type(bad):
    with pytest.raises(TypeError) as info:
        encode_result(bad)
    inner = bad[1] if isinstance(bad, list) else bad.get("k") if isinstance(bad, dict) else bad
    assert type(inner).__name__ in str(info.value)
    with pytest.raises(TypeError):
        encode_call("f", (bad,), {})


def test_cyclic_and_non_contiguous_values_raise_type_error():
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(TypeError):
        encode_result(cyclic)
    with pytest.raises(TypeError):
        encode_result(memoryview(b"abcdef")[::2])


def test_ints_of_any_size():
    values = [2**64, -2**63 - 1, 2**64 - 1, -2**63, 10**100, -10**100, 2**1000 - 1, -2**1000]
    assert reply(values) == values


def test_method_must_be_str():
    with pytest.raises(TypeError):
        encode_call(b"add", (), {})


def test_pickle_only_on_request_on_both_sides():
    data = encode_result({1, 2}, allow_pickle=True)
    with pytest.raises(UnmarshalError, match="allow_pickle"):
        decode_reply(data)
    assert decode_reply(data, allow_pickle=True) == {1, 2}
    call = encode_call("f", (Thing(3),), {"t": Thing(4)}, allow_pickle=True)
    assert decode_call(call, allow_pickle=True) == ("f", (Thing(3),), {"t": Thing(4)})
    with pytest.raises(UnmarshalError):
        decode_call(call)


def test_pickle_is_not_used_for_supported_types():
    assert encode_result([1, b"x"], allow_pickle=True) == encode_result([1, b"x"])


def test_error_round_trip():
    try:
        {}["missing"]
    except KeyError as exc:
        data = encode_error(exc)
    with pytest.raises(RemoteError) as info:
        decode_reply(data)
    err = info.value
    assert err.type_name == "KeyError"
    assert err.message == "'missing'"
    assert "Traceback" in err.traceback and 'missing' in err.traceback
    assert "test_error_round_trip" in err.traceback


def test_error_names_non_builtin_types_with_module():
    class Custom(Exception):
        pass

    with pytest.raises(RemoteError) as info:
        decode_reply(encode_error(Custom("boom")))
    assert info.value.type_name.endswith("test_error_names_non_builtin_types_with_module."
                                         "<locals>.Custom")
    assert info.value.type_name.startswith(Custom.__module__)
    assert info.value.message == "boom"


def test_error_with_broken_str():
    class Nasty(Exception):
        def __str__(self):
            raise RuntimeError("no")

    with pytest.raises(RemoteError) as info:
        decode_reply(encode_error(Nasty()))
    assert "unprintable" in info.value.message


def test_result_that_is_an_error_shaped_list_is_still_a_result():
    assert reply([1, "ValueError", "m", "tb"]) == [1, "ValueError", "m", "tb"]


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x91", msgpack.packb([1, 2, 3]), msgpack.packb(["f", [], {1: 2}]),
    msgpack.packb(["f", {}, {}]), msgpack.packb([1, "f", [], {}]), msgpack.packb("call"),
    msgpack.packb(msgpack.ExtType(99, b"")),
    msgpack.packb(["f", [msgpack.ExtType(1, b"\x01")], {}]),
    b"\xa3\xff\xfe\xfd",  # invalid UTF-8 str
])
def test_malformed_calls_raise_unmarshal_error(data):
    with pytest.raises(UnmarshalError):
        decode_call(data)
    with pytest.raises(ValueError):
        decode_call(data)


@pytest.mark.parametrize("data", [
    b"", msgpack.packb([]), msgpack.packb([2, 1]), msgpack.packb([True, 1]),
    msgpack.packb([1, "a", "b"]), msgpack.packb([1, "a", "b", 4]), msgpack.packb({0: 1}),
    msgpack.packb([0, 1]) + b"\x00",  # trailing garbage
])
def test_malformed_replies_raise_unmarshal_error(data):
    with pytest.raises(UnmarshalError):
        decode_reply(data)


def test_unhashable_key_from_peer_is_an_unmarshal_error():
    data = b"\x92\x00\x81\x91\x01\x02"  # [0, {[1]: 2}]
    with pytest.raises(UnmarshalError):
        decode_reply(data)


# ---------------------------------------------------------------- numpy

np = pytest.importorskip("numpy")


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.int16).reshape(3, 4),
    np.arange(12, dtype=">f8").reshape(3, 4).T,         # big-endian, Fortran order
    np.zeros((0, 5), dtype=np.uint8),
    np.array(3.5),                                      # 0-d
    np.array([True, False]),
    np.array(["ab", "cde"]),
    np.array([b"ab", b"c"]),
    np.array([1 + 2j]),
    np.array(["2020-01-01", "NaT"], dtype="datetime64[ns]"),
    np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2, 1:],
])
def test_arrays_round_trip_read_only(arr):
    got = reply(arr)
    assert type(got) is np.ndarray
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    assert not got.flags.writeable
    assert got.copy().flags.writeable


def test_numpy_scalars_keep_their_dtype():
    for value in (np.int32(-5), np.uint64(2**64 - 1), np.bool_(True), np.float16(1.5),
                  np.datetime64("2021-02-03")):
        got = reply(value)
        assert type(got) is type(value) and got == value


def test_object_and_structured_arrays_are_refused():
    for arr in (np.array([object()]), np.zeros(2, dtype=[("a", "i4"), ("b", "f8")])):
        with pytest.raises(TypeError, match="dtype"):
            encode_result(arr)
    # ...unless pickling was asked for
    arr = np.array([Thing(1)], dtype=object)
    assert reply(arr, allow_pickle=True)[0] == Thing(1)


def _ext(payload):
    return msgpack.packb([0, msgpack.ExtType(1, payload)])


@pytest.mark.parametrize("payload", [
    b"", b"\x00\x01\x03<i4",                      # header cut short
    b"\x00\x01\x03<i4" + (2).to_bytes(8, "little") + b"\x00" * 7,   # 7 bytes for 2 int32
    b"\x00\x01\x03|O8" + (1).to_bytes(8, "little") + b"\x00" * 8,   # object dtype
    b"\x00\x01\x03zz9" + (1).to_bytes(8, "little") + b"\x00" * 8,   # no such dtype
    b"\x00\x01\x04\xff\xfe<4" + (1).to_bytes(8, "little"),          # not ascii
    b"\x00\x02\x03<i4" + (2**40).to_bytes(8, "little") * 2,         # huge shape
])
def test_malformed_arrays_raise_unmarshal_error(payload):
    with pytest.raises(UnmarshalError):
        decode_reply(_ext(payload))


def test_arrays_without_numpy_on_the_receiver(monkeypatch):
    data = encode_result(np.arange(3))
    monkeypatch.setitem(sys.modules, "numpy", None)
    with pytest.raises(UnmarshalError, match="numpy"):
        decode_reply(data)
    assert reply([1, b"x"]) == [1, b"x"]  # and nothing else needs numpy


def test_pickle_payload_is_really_pickle():
    data = encode_result(Thing(9), allow_pickle=True)
    ext = msgpack.unpackb(data)[1]
    assert ext.code == marshal._EXT_PICKLE and pickle.loads(ext.data) == Thing(9)


@pytest.mark.parametrize("args,kwargs,where", [
    (({frozenset((1, 2)): 3},), None, "args[0]"),
    (([1, {"a": {(1, frozenset()): 1}}],), None, "args[0][1]['a']"),
    ((), {"k": {frozenset(): 1}}, "kwargs['k']"),
    ((({1: [{b"x": {frozenset((1,)): 2}}]},),), None, "args[0][0][1][0][b'x']"),
])
def test_a_dict_key_the_server_cannot_rebuild_is_refused_by_the_encoder(args, kwargs, where):
    with pytest.raises(TypeError, match=re.escape(where)):
        marshal.encode_call("m", args, kwargs)


def test_dict_keys_the_server_rebuilds_pass():
    value = {"s": 1, b"b": 2, 3: 3, True: 4, 2.5: 5, None: 6, (1, ("a", None)): 7}
    assert marshal.decode_call(marshal.encode_call("m", (value, [value]), {"k": {"n": value}})) == \
        ("m", (value, [value]), {"k": {"n": value}})


def test_a_remote_builtin_error_is_that_builtin_and_a_remote_error():
    import ombm.errors

    for name, builtin in (("KeyError", KeyError), ("OSError", OSError), ("ZeroDivisionError", ZeroDivisionError)):
        with pytest.raises(builtin) as info:
            decode_reply(encode_error(builtin("why")))
        err = info.value
        assert isinstance(err, RemoteError) and err.type_name == name and type(err).__name__ == f"Remote{name}"
        assert pickle.loads(pickle.dumps(err)).type_name == name
    for name in ("UnicodeDecodeError", "KeyboardInterrupt", "mymodule.KeyError", "not an identifier", "print"):
        err = ombm.errors.remote_error(name, "m", "")
        assert type(err) is RemoteError  # no builtin exception class to join: plain
    assert set(ombm.errors._remote_classes) <= set(dir(__import__("builtins")))  # bounded by the builtins
