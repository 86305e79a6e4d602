"""``ombm bench rpc``'s Table 2 breakdown (cli/bench/rpc.py): it times what the lanes do.

The lanes pack and unpack plain calls and replies in C (``_native.pack_direct``,
``_native.unpack_plain``); the breakdown must time those, not msgpack's Python-called packer, or
its sum no longer explains the measured call."""

from __future__ import annotations

import math

import pytest

from ombm import _native
from ombm.cli.bench import rpc
from ombm.rpc import marshal


@pytest.mark.parametrize("size", [32, 1024])
def test_every_row_of_the_table_is_timed(size: int) -> None:
    found = rpc.breakdown(size, 200)
    for name, _ in rpc._TABLE2_ROWS:
        if name != "signal round trip":  # (measured beside it, in the same run)
            assert math.isfinite(found[name]) and found[name] > 0, name


def test_the_lanes_pack_these_messages_themselves() -> None:
    """The messages the breakdown times are plain: the C packer and unpacker take them (if this
    failed, the rows would time the msgpack fallback, which the lanes do not use for them)."""
    payload = rpc._payload(1024)
    for message in (["echo", [payload], {}], [0, payload]):
        packed = _native.pack_direct(marshal.packer(), message)
        assert packed is not None
        assert _native.unpack_plain(packed) is not None
