"""Large inline payloads on the lanes (issue 13 item 4: one copy per side): a bytes, bytearray or
C-contiguous memoryview argument or result of ``_native.SPLIT_MIN`` bytes up to ``bulk.BULK_MIN``
is packed straight into the message (one copy), and copied out of the slot straight into the bytes
the receiver gets (one copy, checksum fused); a large ext (a numpy array, a tuple) is copied out
likewise into the bytes its decoder gets. The wire stays msgpack's: the message the client's
lane wrote and the reply the server's lane wrote are compared byte for byte with what the Python
encoders make, and every value, around each threshold, must come back whole, from a real server
process on both lanes.
"""

from __future__ import annotations

import pytest

import ombm
from ombm import _native
from ombm.rpc import bulk, marshal
from ombm.transport import wire
from rpc_helpers import pattern, served
from test_rpc_lanes import _next_id, _reply_to, _resend

pytestmark = pytest.mark.processes

SIZES = [_native.SPLIT_MIN - 1, _native.SPLIT_MIN, 65536, bulk.BULK_MIN - 1]


def _wrote(cli, message: bytes) -> None:
    """The client's lane wrote ``message`` last, if it fits one frame (else the protocol sends it)."""
    if len(message) <= cli._request.max_payload:
        assert cli._lane.message == message


@pytest.fixture
def calc():
    report: dict = {}
    yield from served("calc", "inline", report)
    assert report["stats"][0]["lane_calls"] > 0  # the lanes served (not the protocol's Python path)


def test_large_buffers_come_back_whole_and_the_message_is_msgpacks(calc):
    with ombm.rpc.connect(calc, timeout=30.0) as cli:
        assert cli._lane is not None
        for n in SIZES:
            data = pattern(n)
            for value in (data, bytearray(data), memoryview(data)):
                assert cli.identity(value) == data
                _wrote(cli, marshal.encode_call("identity", (value,)))
            args = (b"s", data, (1, "t"), memoryview(data)[::-1].tobytes(), bytearray(3), [data[:10]])
            assert cli.echo(*args) == {"args": [bytes(a) if isinstance(a, bytearray) else a for a in args],
                                       "kwargs": {}}
            _wrote(cli, marshal.encode_call("echo", args))
        with pytest.raises(TypeError, match="non-contiguous"):  # refused as the packer refuses it
            cli.identity(memoryview(pattern(20000))[::2])
        assert cli.echo(pattern(9000), key=pattern(9000)) == {"args": [pattern(9000)], "kwargs": {"key": pattern(9000)}}
        assert cli.size(pattern(bulk.BULK_MIN)) == bulk.BULK_MIN  # the bulk guard's, as before


def test_large_exts_come_back_as_before(calc):
    """A numpy array or a tuple of SPLIT_MIN bytes or more (an ext, copied out of the slot into the
    bytes its decoder gets): what the Python decoder makes of them, a read-only array over them."""
    np = pytest.importorskip("numpy")
    with ombm.rpc.connect(calc, timeout=30.0) as cli:
        for n in (_native.SPLIT_MIN // 8, 8192, 15000):
            arr = np.arange(n, dtype=np.float64).reshape(-1, 2 if n % 2 == 0 else 1)
            got = cli.identity(arr)
            assert got.dtype == arr.dtype and got.shape == arr.shape and (got == arr).all()
            assert not got.flags.writeable
            assert cli.identity((pattern(n), n)) == (pattern(n), n)


def test_the_servers_reply_is_msgpacks(calc):
    with ombm.rpc.connect(calc, timeout=30.0) as cli:
        for n in SIZES:
            if len(marshal.encode_call("identity", (pattern(n),))) > cli._request.max_payload:
                continue  # several frames: not the lanes'
            assert cli.identity(b"warm") == b"warm"
            call_id = _next_id(cli)
            cli._protocol._next_id += 1  # the client's later calls skip the id used here
            _resend(cli, call_id, "identity", pattern(n))
            frame = _reply_to(cli, call_id)
            assert frame is not None and frame.kind == wire.Kind.REPLY
            assert bytes(frame.payload) == marshal.encode_result(pattern(n))
