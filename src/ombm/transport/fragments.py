"""Fragmentation: how a message is cut into frames, shared by the RPC and stream protocols (paper §4).

A message longer than a frame's payload travels as ``frag_count`` fragments (see
:mod:`ombm.transport.wire`: at most :data:`~ombm.transport.wire.MAX_FRAGMENTS`), each of
``max_payload`` bytes but the last.  The pieces are views of the message, not copies: the
copy happens once, where a frame is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ombm.transport.wire import MAX_FRAGMENTS

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["split", "check_max_payload"]


def split(data: ReadableBuffer, max_payload: int) -> list[bytes | memoryview]:
    """Cut ``data`` into at most MAX_FRAGMENTS pieces of at most ``max_payload`` bytes."""
    whole = data if type(data) is bytes else memoryview(data).cast("B")
    n = len(whole)
    if n <= max_payload:
        return [whole]
    count = -(-n // max_payload)
    if count > MAX_FRAGMENTS:
        raise ValueError(f"message of {n} bytes needs {count} fragments of {max_payload} "
                         f"bytes, more than {MAX_FRAGMENTS}")
    view = memoryview(whole)
    return [view[i:i + max_payload] for i in range(0, n, max_payload)]


def check_max_payload(max_payload: int) -> None:
    """``ValueError`` unless ``max_payload`` (bytes a frame carries) is a positive int."""
    if not isinstance(max_payload, int) or max_payload < 1:
        raise ValueError(f"max_payload must be a positive int, not {max_payload!r}")
