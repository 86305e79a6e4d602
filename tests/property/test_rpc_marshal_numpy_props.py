"""RPC marshalling of numpy arrays (skipped without numpy)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

np = pytest.importorskip("numpy")
hnp = pytest.importorskip("hypothesis.extra.numpy")

from ombm.rpc.marshal import decode_reply, encode_result  # noqa: E402

dtypes = (hnp.boolean_dtypes() | hnp.integer_dtypes() | hnp.unsigned_integer_dtypes()
          | hnp.floating_dtypes() | hnp.complex_number_dtypes() | hnp.datetime64_dtypes()
          | hnp.timedelta64_dtypes() | hnp.byte_string_dtypes() | hnp.unicode_string_dtypes())


@given(hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)),
       st.booleans())
def test_array_round_trip(arr, transpose):
    if transpose:
        arr = arr.T
    got = decode_reply(encode_result([arr, {"a": arr}]))
    for x in (got[0], got[1]["a"]):
        assert x.dtype == arr.dtype and x.shape == arr.shape
        assert x.tobytes() == np.ascontiguousarray(arr).tobytes()
