"""Zero-copy numpy arrays over a stream (``Stream.send_array`` / ``Stream.recv_array``).

This module owns how an array travels: its header (dtype and shape) and the
:class:`ArrayView` a reader gets.  numpy is optional: it is imported on first use.

An array message is a stream message whose payload is::

    | array data (nbytes) | zero pad | header (msgpack {"d": descr, "s": shape}) | header length u32 |

When it fits one slot, the writer pads it so that the frame, and with it the
array data, starts on a 64-byte boundary of the slot; the reader validates the
checksum in place (a read, no copy) and hands out a **read-only ndarray over the
segment**.  The slot stays the reader's until the view is released *and* no array
made from it is alive any more: the writer cannot reuse it before (credit-based
flow control), so an array kept past :meth:`ArrayView.release` never changes under
its holder, it only holds the stream's window (and with it the writer) back.
After ``release()`` the view itself refuses access (:class:`~ombm.ClosedError`).
An array larger than a slot is fragmented and arrives as a private copy.

dtypes travel as numpy's own descriptions (``numpy.lib.format.dtype_to_descr``),
never pickled; object dtypes (and structured dtypes holding objects) are refused:
their bytes are pointers into the sender's heap.
"""

from __future__ import annotations

import math
import struct
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import msgpack

from ombm.errors import ClosedError, FrameError

if TYPE_CHECKING:
    import numpy
    from numpy.typing import DTypeLike, NDArray

__all__ = ["ArrayView", "check_array", "pack_header", "unpack_trailer", "owner_of"]

_HLEN = struct.Struct("<I")
MAX_HEADER = 4096
MAX_DIMS = 64


def _numpy() -> types.ModuleType:
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is an optional dependency
        raise ImportError("ombm arrays need numpy: pip install 'ombm[numpy]'") from None
    return numpy


def check_array(array: object) -> NDArray[Any]:
    """Return ``array`` if it can travel, else raise ``TypeError``/``ValueError`` (nothing is sent)."""
    np = _numpy()
    if not isinstance(array, np.ndarray):
        raise TypeError(f"send_array needs a numpy.ndarray, not {type(array).__name__}")
    if array.dtype.hasobject:
        raise TypeError(f"cannot send an array of dtype {array.dtype}: it holds Python object "
                        "references, not data (convert it, or pickle it yourself)")
    if array.ndim > MAX_DIMS:
        raise ValueError(f"arrays of more than {MAX_DIMS} dimensions are not supported")
    return cast("NDArray[Any]", array)  # checked above


def pack_header(array: NDArray[Any]) -> bytes:
    """The header that follows the data: dtype description and shape, then its length."""
    from numpy.lib import format as npformat

    # numpy's own functions, typed in some releases and not in others: called through Any either way
    dtype_to_descr: Callable[[Any], Any] = npformat.dtype_to_descr
    header: bytes = msgpack.packb({"d": dtype_to_descr(array.dtype), "s": list(array.shape)})
    if len(header) > MAX_HEADER:
        raise ValueError("the array's dtype description is too long to send")
    return header + _HLEN.pack(len(header))


def _as_descr(value: Any) -> Any:
    """msgpack turned descr tuples into lists: turn them back (structured dtypes). ``value`` is
    untrusted msgpack output; numpy's ``descr_to_dtype`` checks what comes out."""
    if isinstance(value, list):
        fields = []
        for field in value:
            if not isinstance(field, list) or not 2 <= len(field) <= 3:
                raise FrameError("malformed structured dtype in array header")
            name, sub = field[0], _as_descr(field[1])
            fields.append((name, sub) if len(field) == 2 else (name, sub, tuple(field[2])))
        return fields
    return value


def unpack_trailer(payload: bytes | bytearray | memoryview) -> tuple[numpy.dtype[Any], tuple[int, ...], int]:
    """``(dtype, shape, nbytes)`` of an array payload; :class:`FrameError` if inconsistent.

    ``payload`` is the whole array payload (a private copy, or memory the writer
    does not touch any more); every field is checked before use.
    """
    _numpy()
    from numpy.lib import format as npformat

    n = len(payload)
    if n < _HLEN.size:
        raise FrameError("array payload too short")
    (hlen,) = _HLEN.unpack_from(payload, n - _HLEN.size)
    if hlen > min(MAX_HEADER, n - _HLEN.size):
        raise FrameError("array header length out of bounds")
    try:
        header = msgpack.unpackb(bytes(payload[n - _HLEN.size - hlen:n - _HLEN.size]),
                                 max_bin_len=0, max_ext_len=0)
        descr_to_dtype: Callable[[Any], Any] = npformat.descr_to_dtype  # typed in some numpy releases only
        dtype = descr_to_dtype(_as_descr(header["d"]))
        shape = tuple(header["s"])
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(f"malformed array header: {exc}") from None
    if dtype.hasobject or len(shape) > MAX_DIMS or not all(
            type(d) is int and d >= 0 for d in shape):
        raise FrameError("array header describes an array that cannot travel")
    nbytes = math.prod(shape) * dtype.itemsize  # exact (Python ints): a hostile shape cannot wrap
    if nbytes > n - _HLEN.size - hlen:
        raise FrameError("array data overruns its payload")
    return dtype, shape, nbytes


def owner_of(array: NDArray[Any]) -> object:
    """The object whose life keeps ``array``'s memory (and every view of it) alive."""
    np = _numpy()
    root = array
    while isinstance(root, np.ndarray) and root.base is not None:
        root = root.base
    return root


class ArrayView:
    """A received array: :attr:`array` is a read-only ndarray (over the segment if ``zero_copy``).

    Use it in a ``with`` block or call :meth:`release` when done.  After release
    :attr:`array` raises :class:`~ombm.ClosedError`; arrays taken from it before stay
    valid and unchanged, and keep the slot from the writer until they are gone.
    """

    __slots__ = ("_array", "_on_free", "dtype", "shape", "zero_copy", "seq", "__weakref__")

    def __init__(self, array: NDArray[Any], zero_copy: bool, seq: int,
                 on_free: Callable[[int], object] | None = None) -> None:
        self._array: NDArray[Any] | None = array
        self.dtype = array.dtype
        self.shape = array.shape
        self.zero_copy = zero_copy
        self.seq = seq
        self._on_free: weakref.finalize[[int], object] | None = None
        if on_free is not None:
            # the slot goes back when the memory's owner dies: our reference and every
            # array or view the user made from it
            self._on_free = weakref.finalize(owner_of(array), on_free, seq)
            self._on_free.atexit = False

    @property
    def array(self) -> NDArray[Any]:
        array = self._array
        if array is None:
            raise ClosedError("this ArrayView was released; copy the array if you need it later")
        return array

    @property
    def released(self) -> bool:
        return self._array is None

    def copy(self) -> NDArray[Any]:
        """A private, writable copy of the array."""
        copied: NDArray[Any] = self.array.copy()
        return copied

    def release(self) -> None:
        """Idempotent: done with the view; the slot goes back once no array made from it is alive."""
        self._array = None

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> NDArray[Any]:
        array = self.array
        if copy:
            return array.astype(dtype) if dtype is not None else array.copy()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __enter__(self) -> ArrayView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._array is None else ("zero-copy" if self.zero_copy else "copy")
        return f"<ombm.ArrayView {self.dtype} {self.shape} {state}>"
