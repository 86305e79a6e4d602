"""Marshalling of RPC arguments and results: msgpack, safe by default (DESIGN §3, paper §4).

This module owns what a call and a reply look like as bytes.  It never touches a
channel: the bytes it produces are the opaque messages of :mod:`ombm.transport.rpc_protocol`.

What travels, and what comes back:

- ``None``, ``bool``, ``int``, ``float``, ``str``: as themselves (ints outside
  msgpack's -2**63 .. 2**64-1 travel as ext type 3, two's complement bytes).
- ``bytes``, ``bytearray``, ``memoryview`` (C-contiguous): as msgpack *bin*,
  packed straight from the buffer (no intermediate ``bytes``); they come back as
  ``bytes``.
- ``list``: as a msgpack array, back as a list; ``tuple`` (a namedtuple too): as ext type 4
  holding an array, back as a **tuple** (a namedtuple as a plain tuple).
- subclasses of ``int``, ``float``, ``str``, ``bytes``, ``list`` and ``dict`` (an ``IntEnum``,
  an ``OrderedDict``): as the builtin they derive from, and back as it.
- ``dict``: keys of type ``str``, ``bytes``, ``int`` (``bool``), ``float``, ``None`` or a tuple
  of those, values of any type here; comes back as a dict.  A dict with any other key, at any
  depth, is what the server cannot rebuild: ``TypeError`` at the caller (see
  :func:`check_keys` for where, at no cost per call for arguments without containers).
- a user's own type, once registered on both sides with :func:`register_type` (an encoder to
  bytes, a decoder from them, and an ext type code 16-127): as that ext type, back as the
  decoder makes it.  No pickle involved.
- numpy arrays and scalars (only if numpy is installed; it is never required), of
  numeric, bool, bytes, str, datetime or timedelta dtype: as ext type 1 carrying
  dtype string, shape and the raw C-order buffer.  An array comes back as a
  **read-only** ndarray viewing the received bytes (zero copy; the receiver owns
  those bytes, so nothing can overwrite them; call ``.copy()`` for a writable one);
  a numpy scalar comes back as a numpy scalar of the same dtype, except those that
  subclass a Python type (``float64``, ``str_``, ``bytes_``), which travel as it.
- anything else (sets, arbitrary objects, object or structured arrays, complex
  numbers): ``TypeError`` naming the type, raised while encoding, i.e. on the caller's
  side, unless the encoder passes ``allow_pickle=True``: then it travels pickled as
  ext type 2, and the decoder must pass ``allow_pickle=True`` too or get
  :class:`UnmarshalError`.  Never unpickle data from a peer you do not trust.

Large payloads (:mod:`ombm.rpc.bulk`): given a connection's bulk data (``bulk=``), a
``bytes``, ``bytearray``, C-contiguous ``memoryview`` or numpy array of
:data:`~ombm.rpc.bulk.BULK_MIN` bytes or more that is an argument (positional or keyword) or
the result itself is copied once into the bulk segment, checksummed in that copy, and travels
as ext type 5 (bytes) or 6 (a numpy array: its head, then the descriptor) holding a
descriptor; the receiver copies it out once (checksum after the copy) into bytes it owns, or a
read-only ndarray viewing them.  Without ``bulk`` (or no room in the segment) it travels inline
as above; the decoder refuses a descriptor it has no bulk data for (:class:`UnmarshalError`).
A large payload nested deeper (in a list, a dict) travels inline.

Bytes that are not a valid call or reply raise :class:`~ombm.errors.UnmarshalError`
(an ``OmbmError`` and a ``ValueError``; importable from here too).  An exception the remote
procedure raised comes back as :func:`~ombm.errors.remote_error` makes it: for a builtin type
(``KeyError``) a ``RemoteError`` that is also that builtin, so ``except KeyError`` works.

On the wire a call is the array ``[method, [args...], {kwargs}]`` and a reply ``[0, result]`` or
``[1, type name, message, traceback text]``; the packer runs with ``strict_types`` so that a
tuple (and a subclass of a builtin) reaches :func:`_default` rather than being packed as an array.
"""

from __future__ import annotations

import pickle
import struct
import threading
import sys
import traceback
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from ombm import _native
from ombm.errors import MessageTooLargeError, RemoteError, UnmarshalError, remote_error
from ombm.rpc.bulk import BULK_MIN, DESCRIPTOR

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["encode_call", "decode_call", "encode_result", "encode_error", "decode_reply", "check_keys",
           "RemoteError", "UnmarshalError", "Packer", "ExtHook", "packer", "ext_hook", "register_type",
           "BulkData", "BulkReader", "guarded_packer", "route_args", "has_large"]

_EXT_NDARRAY = 1
_EXT_PICKLE = 2
_EXT_BIGINT = 3
_EXT_TUPLE = 4
_EXT_BULK = 5        # bytes in the bulk segment: a descriptor (ombm.rpc.bulk)
_EXT_BULK_ARRAY = 6  # a numpy array in the bulk segment: its head (as ext type 1's), then a descriptor
USER_CODES = range(16, 128)  # ext type codes for register_type (0-15 are ombm's)
# tuples within tuples (lists between them do not count): each level is a nested msgpack call with
# ~40 KiB of C stack, so a peer's deeper nesting must be refused before it overflows the stack
MAX_TUPLE_NESTING = 32


class _Nesting(threading.local):
    """How many tuples this thread is inside, packing and unpacking."""

    packing = 0
    unpacking = 0


_nesting = _Nesting()
_OK, _ERR = 0, 1
_ARRAY_KINDS = frozenset("biufcSUmM")
_ARRAY_HEAD = struct.Struct("<BBB")  # is_scalar, ndim, len(dtype str); then dtype, u64 shape[]

# msgpack's ext_hook: (ext type code, its bytes) -> the object they stand for
ExtHook = Callable[[int, bytes], object]


class Packer(Protocol):
    """What ombm uses of a ``msgpack.Packer``."""

    def pack(self, obj: object, /) -> bytes: ...

    def reset(self) -> None: ...


class BulkReader(Protocol):
    """What unmarshalling uses of a connection's bulk segments."""

    def take(self, descriptor: bytes, budget: list[int], /) -> bytes | memoryview: ...


class BulkData(BulkReader, Protocol):
    """What marshalling uses of a connection's bulk segments (:class:`ombm.rpc.bulk.Bulk`)."""

    def put(self, data: ReadableBuffer, n: int, /) -> bytes | None: ...

    def cancel(self, count: int, /) -> None: ...


class _Guarded:
    """A packer whose ``pack`` refuses messages with a large payload (``_native.bulk_guard``)."""

    def __init__(self, inner: Packer) -> None:
        self.pack = _native.bulk_guard(inner.pack, BULK_MIN, BufferError)
        self.reset = inner.reset


def guarded_packer(allow_pickle: bool = False) -> Packer:
    """:func:`packer`, but a call or reply with a bytes-like argument or result of
    :data:`~ombm.rpc.bulk.BULK_MIN` bytes or more raises ``BufferError`` instead (a few type
    checks per message): the native lanes then leave the message to Python, which sends the
    payload through the bulk segment (or inline, for a connection without one)."""
    return _Guarded(packer(allow_pickle))


# ---------------------------------------------------------------- users' types

_encoders: dict[type, tuple[int, Callable[[Any], bytes]]] = {}
_decoders: dict[int, tuple[type, Callable[[bytes], object]]] = {}


def register_type(cls: type, code: int, encode: Callable[[Any], bytes], decode: Callable[[bytes], object]) -> None:
    """Marshal instances of ``cls`` (and of its subclasses) as msgpack ext type ``code``.

    ``encode(obj) -> bytes`` runs on the sending side, ``decode(data) -> object`` on the receiving
    one: register the same ``cls``, ``code`` and functions in the client and in the server (at
    import time, before connecting or serving).  ``code``: 16-127 (0-15 are ombm's).  A decoder
    that raises makes the message an :class:`UnmarshalError` (it gets bytes from the peer: check
    them).  Registering a code or a class again replaces it.  No pickle is involved::

        ombm.rpc.register_type(Point, 16, lambda p: struct.pack("<dd", p.x, p.y),
                               lambda b: Point(*struct.unpack("<dd", b)))
    """
    if not isinstance(cls, type):
        raise TypeError(f"cls must be a class, not {type(cls).__name__}")
    if type(code) is not int or code not in USER_CODES:
        raise ValueError(f"code must be an int from {USER_CODES.start} to {USER_CODES.stop - 1}, not {code!r}")
    if not callable(encode) or not callable(decode):
        raise TypeError("encode and decode must be callable")
    if cls in (type(None), bool, int, float, str, bytes, bytearray, memoryview, list, tuple, dict):
        raise ValueError(f"{cls.__name__} is marshalled by ombm itself")
    for known, (known_code, _) in list(_encoders.items()):
        if known_code == code and known is not cls:
            del _encoders[known]
    _encoders[cls] = (code, encode)
    _decoders[code] = (cls, decode)


def _encode_user(obj: object, code: int, encode: Callable[[Any], bytes]) -> msgpack.ExtType:
    data = encode(obj)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"the encoder registered for {type(obj).__qualname__} returned "
                        f"{type(data).__name__}, not bytes")
    return msgpack.ExtType(code, bytes(data))


def _decode_user(code: int, data: bytes) -> object:
    cls, decode = _decoders[code]
    try:
        return decode(data)
    except Exception as exc:
        raise UnmarshalError(f"the decoder registered for {cls.__qualname__} (ext type {code}) "
                             f"failed: {exc!r}") from None


# ---------------------------------------------------------------- encoding

def _pack_ndarray(obj: Any, np: types.ModuleType) -> msgpack.ExtType:
    scalar = isinstance(obj, np.generic)
    arr = np.asarray(obj, order="C")  # keeps 0-d arrays 0-d, copies a non-C-ordered one
    dtype = arr.dtype
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None:
        raise TypeError(f"cannot marshal a numpy array of dtype {dtype!s}")
    head = _array_head(arr, scalar)
    raw = arr.reshape(-1).view(np.uint8) if arr.size else b""
    return msgpack.ExtType(_EXT_NDARRAY, b"".join((head, raw)))


def _array_head(arr: Any, scalar: bool) -> bytes:
    """is_scalar, ndim, len(dtype str), dtype str, u64 shape[] (ext type 1's and 6's head)."""
    dt: bytes = arr.dtype.str.encode("ascii")
    return _ARRAY_HEAD.pack(scalar, arr.ndim, len(dt)) + dt + struct.pack(f"<{arr.ndim}Q", *arr.shape)


_ExtType = msgpack.ExtType


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    """``ExtType(code, data)`` of our own making, without its argument checks."""
    made: msgpack.ExtType = tuple.__new__(_ExtType, (code, data))
    return made


def _route(value: object, bulk: BulkData, budget: list[int]) -> object:
    """``value`` as it travels given bulk data: a large bytes-like or numpy value as its
    descriptor (an ``ExtType``) if it is within ``budget[0]`` bytes (reduced by it) and the bulk
    segment has room, else ``value`` itself (inline: the message limits apply to it there)."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        n = len(value)  # type: ignore[arg-type]
        if n < BULK_MIN or n > budget[0]:
            return value
        found = bulk.put(value, n)  # type: ignore[arg-type]
        if found is None:
            return value
        budget[0] -= n
        return _ext(_EXT_BULK, found)
    if kind is memoryview:
        view: memoryview = value  # type: ignore[assignment]
        n = view.nbytes
        if n < BULK_MIN or n > budget[0] or not view.c_contiguous:
            return value
        found = bulk.put(view, n)
        if found is None:
            return value
        budget[0] -= n
        return _ext(_EXT_BULK, found)
    np = sys.modules.get("numpy")
    if np is not None and kind is np.ndarray:
        arr: Any = value
        n = arr.nbytes
        if n < BULK_MIN or n > budget[0] or arr.dtype.kind not in _ARRAY_KINDS or arr.dtype.fields is not None:
            return value
        arr = np.ascontiguousarray(arr)
        found = bulk.put(arr.reshape(-1).view(np.uint8), n)  # (datetime arrays export no buffer)
        if found is None:
            return value
        budget[0] -= n
        return _ext(_EXT_BULK_ARRAY, _array_head(arr, False) + found)
    return value


def _is_large(value: object, limit: int) -> bool:
    """Whether ``value`` is a payload :func:`_route` would send through the bulk segment (at most
    ``limit`` bytes)."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return BULK_MIN <= len(value) <= limit  # type: ignore[arg-type]
    if kind is memoryview:
        return BULK_MIN <= value.nbytes <= limit and value.c_contiguous  # type: ignore[attr-defined, no-any-return]
    np = sys.modules.get("numpy")
    if np is not None and kind is np.ndarray:
        arr: Any = value
        return bool(BULK_MIN <= arr.nbytes <= limit and arr.dtype.kind in _ARRAY_KINDS and arr.dtype.fields is None)
    return False


def has_large(args: tuple[object, ...], kwargs: dict[str, object], limit: int) -> bool:
    """Whether a call has an argument that would travel through a bulk segment (given one, and at
    most ``limit`` bytes of bulk data)."""
    return any(_is_large(arg, limit) for arg in args) or any(_is_large(arg, limit) for arg in kwargs.values())


def route_args(args: tuple[object, ...], kwargs: dict[str, object], bulk: BulkData,
               limit: int) -> tuple[tuple[object, ...], dict[str, object], int, int] | None:
    """A call's arguments with the large payloads routed through ``bulk`` (see :func:`_route`; at
    most ``limit`` bytes of them), how many went (the caller cancels them if the message is not
    sent) and their bytes; None if none did."""
    budget = [limit]
    routed = tuple([_route(arg, bulk, budget) for arg in args])
    named = {key: _route(arg, bulk, budget) for key, arg in kwargs.items()} if kwargs else kwargs
    count = 0
    for arg in routed:
        if type(arg) is _ExtType:
            count += 1
    for arg in named.values():
        if type(arg) is _ExtType:
            count += 1
    return (routed, named, count, limit - budget[0]) if count else None


def _default(obj: object, allow_pickle: bool) -> object:
    """What msgpack packs in place of ``obj``, which it cannot pack itself (strict types: anything
    but an exact None, bool, int in range, float, str, bytes, bytearray, memoryview, list, dict)."""
    user = _encoders.get(type(obj))
    if user is not None:
        return _encode_user(obj, *user)
    if isinstance(obj, tuple):
        return msgpack.ExtType(_EXT_TUPLE, _pack_tuple(obj, allow_pickle))
    if isinstance(obj, int):
        if type(obj) is not int:  # an IntEnum, an IntFlag: as the int it is
            return int(obj)
        size = obj.bit_length() // 8 + 1  # msgpack calls us for ints it cannot hold
        return msgpack.ExtType(_EXT_BIGINT, obj.to_bytes(size, "little", signed=True))
    if isinstance(obj, float):  # numpy's float64 too
        return float(obj)
    if isinstance(obj, str):  # numpy's str_ too
        return str(obj)
    if isinstance(obj, (bytes, bytearray)):  # numpy's bytes_ too
        return bytes(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    for cls, user in _encoders.items():
        if isinstance(obj, cls):
            return _encode_user(obj, *user)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, (np.ndarray, np.generic)):
        try:
            return _pack_ndarray(obj, np)
        except TypeError:
            if not allow_pickle:
                raise
    if allow_pickle:
        return msgpack.ExtType(_EXT_PICKLE, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    raise TypeError(f"cannot marshal an object of type {type(obj).__module__}."
                    f"{type(obj).__qualname__} (pass allow_pickle=True to pickle it)")


def _default_safe(obj: object) -> msgpack.ExtType:
    return _default(obj, False)


def _default_pickle(obj: object) -> msgpack.ExtType:
    return _default(obj, True)


def packer(allow_pickle: bool = False) -> Packer:
    """A msgpack Packer that packs as the encoders do, for one thread at a time (each native RPC
    lane packs with its own: calls as :func:`encode_call`, results as :func:`encode_result`; on
    failure it must ``reset()`` it and let the Python encoder say why)."""
    made: Packer = msgpack.Packer(default=_default_pickle if allow_pickle else _default_safe, strict_types=True)
    return made


def _pack_tuple(items: tuple[object, ...], allow_pickle: bool) -> bytes:
    """A tuple's items as an array, packed by a packer of their own (the thread's is mid-message)."""
    if _nesting.packing >= MAX_TUPLE_NESTING:
        raise TypeError(f"cannot marshal tuples nested more than {MAX_TUPLE_NESTING} deep")
    _nesting.packing += 1
    try:
        data: bytes = msgpack.packb(list(items), default=_default_pickle if allow_pickle else _default_safe,
                                    strict_types=True)
    finally:
        _nesting.packing -= 1
    return data


class _Packers(threading.local):
    """One msgpack Packer per thread and mode: reusing it is 3x cheaper than ``packb``."""

    def __init__(self) -> None:
        self.safe = packer(False)
        self.pickle = packer(True)


_packers = _Packers()


def _pack_failed(packer: Packer, exc: BaseException) -> BaseException:
    """What to raise when ``packer`` failed with ``exc``; its half-written buffer is discarded."""
    packer.reset()  # never leave half a message in the reused buffer
    if isinstance(exc, BufferError):  # a non-contiguous memoryview
        return TypeError(f"cannot marshal a non-contiguous buffer: {exc}")
    if isinstance(exc, (ValueError, RecursionError)):   # cyclic or too deeply nested data
        return TypeError(f"cannot marshal value: {exc}")
    return exc


_NO_KWARGS: dict[str, object] = {}  # packed for a call without keyword arguments, never changed

# dict keys the server rebuilds as they were (isinstance: bool is an int, a str subclass packs as str;
# a tuple's items are keys too)
_KEY_TYPES = (str, bytes, int, float, type(None), tuple)
# values that hold no dict: the walk skips them at the cost of one set lookup
_LEAVES = frozenset((str, bytes, int, float, bool, type(None), bytearray, memoryview, msgpack.ExtType))
_MAX_DEPTH = 512  # msgpack's own nesting limit: deeper data fails to pack anyway


def _is_key(key: object, depth: int) -> bool:
    if not isinstance(key, _KEY_TYPES):
        return False
    return not isinstance(key, tuple) or (depth <= _MAX_DEPTH and all(_is_key(k, depth + 1) for k in key))


def _walk_keys(value: object, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        return  # the packer refuses it (TypeError) in any case
    if isinstance(value, dict):
        for key, item in value.items():
            if not _is_key(key, depth):
                raise TypeError(f"cannot marshal a dict key of type {type(key).__name__} ({key!r:.60} in {where}): "
                                "the server could not rebuild it; keys must be str, bytes, int, float, None or "
                                "tuples of those")
            if type(item) not in _LEAVES:
                _walk_keys(item, f"{where}[{key!r:.30}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if type(item) not in _LEAVES:
                _walk_keys(item, f"{where}[{index}]", depth + 1)


def check_keys(args: tuple[object, ...], kwargs: dict[str, object] | None = None) -> None:
    """``TypeError`` if a call's arguments hold a dict the server cannot rebuild (a key that is not
    str, bytes, int, float or None, at any depth).

    msgpack packs such a dict without complaint (a tuple key becomes an array, which comes back as
    an unhashable list), its packer has no hook for keys (``default`` only sees types it cannot
    pack), and ``strict_map_key`` acts on the unpacking side, the server's: the check is this walk,
    which looks only inside containers (one set lookup per argument otherwise).
    :func:`encode_call` runs it before packing.  The native call lane packs calls itself, in C, so
    no check can run there without a cost on every call: a synchronous call that takes the lane is
    refused by the server unread (:class:`UnmarshalError`, nothing runs) and the client, on that
    cold path, runs this check and raises its ``TypeError``.
    """
    for index, arg in enumerate(args):
        if type(arg) not in _LEAVES:
            _walk_keys(arg, f"args[{index}]", 1)
    if kwargs:
        for key, arg in kwargs.items():
            if type(arg) not in _LEAVES:
                _walk_keys(arg, f"kwargs[{key!r}]", 1)


def encode_call(method: str, args: tuple[object, ...] = (), kwargs: dict[str, object] | None = None, *,
                allow_pickle: bool = False, bulk: BulkData | None = None, bulk_limit: int = 1 << 62) -> bytes:
    """Marshal a call of ``method(*args, **kwargs)`` (large payloads through ``bulk``, if given: at
    most ``bulk_limit`` bytes of them)."""
    if bulk is not None:
        routed = route_args(args, kwargs or _NO_KWARGS, bulk, bulk_limit)
        if routed is not None:
            try:
                return encode_call(method, routed[0], routed[1], allow_pickle=allow_pickle)
            except BaseException:
                bulk.cancel(routed[2])
                raise
    if type(method) is not str and not isinstance(method, str):
        raise TypeError(f"method name must be str, not {type(method).__name__}")
    for arg in args:  # check_keys(args, kwargs), its first test inlined: flat arguments pass at once
        if type(arg) not in _LEAVES:
            check_keys(args, kwargs)  # what the server could not rebuild: TypeError here, nothing sent
            break
    else:
        if kwargs:
            check_keys((), kwargs)
    packer = _packers.pickle if allow_pickle else _packers.safe
    try:
        return packer.pack([method, list(args), kwargs or _NO_KWARGS])
    except BaseException as exc:
        error = _pack_failed(packer, exc)
        if error is exc:
            raise
    raise error from None


def encode_result(value: object, *, allow_pickle: bool = False, bulk: BulkData | None = None,
                  bulk_limit: int = 1 << 62) -> bytes:
    """Marshal the value a call returned (a large payload through ``bulk``, if given and within
    ``bulk_limit`` bytes)."""
    if bulk is not None:
        routed = _route(value, bulk, [bulk_limit])
        if routed is not value:
            try:
                return encode_result(routed, allow_pickle=allow_pickle)
            except BaseException:
                bulk.cancel(1)
                raise
    packer = _packers.pickle if allow_pickle else _packers.safe
    try:
        return packer.pack([_OK, value])
    except BaseException as exc:
        error = _pack_failed(packer, exc)
        if error is exc:
            raise
    raise error from None


def encode_error(exc: BaseException) -> bytes:
    """Marshal the exception a call raised: type name, message, traceback text."""
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ != "builtins":
        name = f"{cls.__module__}.{name}"
    try:
        message = str(exc)
        text = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    except Exception:  # an exception whose __str__ itself fails
        message, text = f"<unprintable {name}>", ""
    data: bytes = msgpack.packb([_ERR, name, message, text])
    return data


# ---------------------------------------------------------------- decoding

def _unpack_ndarray(data: bytes, bulk: tuple[BulkReader, list[int]] | None = None) -> object:
    """An ext type 1's array (its raw bytes follow the head), or with ``bulk`` an ext type 6's
    (a descriptor follows the head: the raw bytes are copied out of the bulk segment)."""
    try:
        np = __import__("numpy")
    except ImportError:
        raise UnmarshalError("received a numpy array but numpy is not installed") from None
    try:
        scalar, ndim, dlen = _ARRAY_HEAD.unpack_from(data)
        off = _ARRAY_HEAD.size
        dtype = np.dtype(data[off:off + dlen].decode("ascii"))
        off += dlen
        shape = struct.unpack_from(f"<{ndim}Q", data, off)
        off += 8 * ndim
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None:
            raise ValueError(f"dtype {dtype} not allowed")
        count = 1
        for dim in shape:
            count *= dim
        raw: bytes | memoryview = data
        if bulk is not None:
            if scalar or len(data) - off != DESCRIPTOR.size:
                raise ValueError("not an array in the bulk segment")
            if count * dtype.itemsize > bulk[1][0]:  # checked before anything is copied
                raise ValueError("array larger than this side takes per message")
            raw, off = bulk[0].take(data[off:], bulk[1]), 0  # (a view: read-only, in place)
        if count * dtype.itemsize != len(raw) - off:
            raise ValueError("array length does not match its shape")
        arr = np.frombuffer(raw, dtype=dtype, count=count, offset=off).reshape(shape)
    except (ValueError, TypeError, struct.error, UnicodeDecodeError, OverflowError) as exc:
        raise UnmarshalError(f"malformed numpy array: {exc}") from None
    return arr[()] if scalar else arr


def _tuple(data: bytes, hook: ExtHook) -> tuple[object, ...]:
    if _nesting.unpacking >= MAX_TUPLE_NESTING:
        raise UnmarshalError(f"tuples nested more than {MAX_TUPLE_NESTING} deep")
    _nesting.unpacking += 1
    try:
        items = _unpackb(data, ext_hook=hook, strict_map_key=False)
    finally:
        _nesting.unpacking -= 1
    if type(items) is not list:
        raise UnmarshalError("a tuple that does not hold an array")
    return tuple(items)


def _ext_hook_safe(code: int, data: bytes) -> object:
    if code == _EXT_BULK or code == _EXT_BULK_ARRAY:
        raise UnmarshalError("bulk data where this side has no bulk segment")
    if code == _EXT_TUPLE:
        return _tuple(data, _ext_hook_safe)
    if code == _EXT_NDARRAY:
        return _unpack_ndarray(data)
    if code == _EXT_BIGINT:
        return int.from_bytes(data, "little", signed=True)
    if code == _EXT_PICKLE:
        raise UnmarshalError("received pickled data; decoding it requires allow_pickle=True")
    if code in _decoders:
        return _decode_user(code, data)
    raise UnmarshalError(f"unknown msgpack ext type {code}")


def _ext_hook_pickle(code: int, data: bytes) -> object:
    if code == _EXT_TUPLE:
        return _tuple(data, _ext_hook_pickle)
    if code == _EXT_PICKLE:
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise UnmarshalError(f"cannot unpickle received data: {exc!r}") from exc
    return _ext_hook_safe(code, data)


def _bulk_hook(bulk: BulkReader, budget: list[int], allow_pickle: bool) -> ExtHook:
    """The ext hook of one message with bulk data: at most ``budget[0]`` bytes of it in all."""
    base = _ext_hook_pickle if allow_pickle else _ext_hook_safe

    def hook(code: int, data: bytes) -> object:
        if code == _EXT_BULK:
            return bulk.take(data, budget)
        if code == _EXT_BULK_ARRAY:
            return _unpack_ndarray(data, (bulk, budget))
        if code == _EXT_TUPLE:
            return _tuple(data, hook)
        return base(code, data)
    return hook


def _hook(allow_pickle: bool, bulk: BulkReader | None, limit: int) -> ExtHook:
    if bulk is None:
        return _ext_hook_pickle if allow_pickle else _ext_hook_safe
    return _bulk_hook(bulk, [limit], allow_pickle)


_unpackb = msgpack.unpackb


def ext_hook(allow_pickle: bool = False, bulk: BulkReader | None = None, budget: list[int] | None = None) -> ExtHook:
    """The msgpack ``ext_hook`` the decoders use: for a native decoder of plain results (the
    RPC call lane unmarshals ``[0, result]`` replies with it, as :func:`decode_reply` would).

    With ``bulk``, large payloads are copied out of it while ``budget[0]`` (bytes, reduced by each)
    allows: the caller sets it before each message it expects to carry bulk data, and a message
    beyond it fails to unmarshal here (``MessageTooLargeError``), for Python to decode anew."""
    if bulk is None:
        return _ext_hook_pickle if allow_pickle else _ext_hook_safe
    return _bulk_hook(bulk, [0] if budget is None else budget, allow_pickle)


def decode_call(data: ReadableBuffer, *, allow_pickle: bool = False, bulk: BulkReader | None = None,
                bulk_limit: int = 1 << 62) -> tuple[str, tuple[object, ...], dict[str, object]]:
    """Return ``(method, args, kwargs)`` from bytes made by :func:`encode_call`; large payloads
    copied out of ``bulk``, at most ``bulk_limit`` bytes of them."""
    try:
        call = _unpackb(data, ext_hook=_hook(allow_pickle, bulk, bulk_limit), strict_map_key=False)
    except (UnmarshalError, MessageTooLargeError):
        raise
    except Exception as exc:  # msgpack raises ValueError, TypeError, its own errors, ...
        raise UnmarshalError(f"malformed message: {exc}") from None
    if type(call) is list and len(call) == 3:
        method, args, kwargs = call
        if type(method) is str and type(args) is list and type(kwargs) is dict:
            if not kwargs or all(type(k) is str for k in kwargs):
                return method, tuple(args), kwargs
    raise UnmarshalError("not a call message")


def decode_reply(data: ReadableBuffer, *, allow_pickle: bool = False, bulk: BulkReader | None = None,
                 bulk_limit: int = 1 << 62) -> Any:
    """Return the result in bytes made by :func:`encode_result`, or raise the
    :class:`RemoteError` described by bytes made by :func:`encode_error`; a large payload copied
    out of ``bulk``, at most ``bulk_limit`` bytes."""
    try:
        reply = _unpackb(data, ext_hook=_hook(allow_pickle, bulk, bulk_limit), strict_map_key=False)
    except (UnmarshalError, MessageTooLargeError):
        raise
    except Exception as exc:
        raise UnmarshalError(f"malformed message: {exc}") from None
    if type(reply) is list:
        if len(reply) == 2 and reply[0] is _OK:
            return reply[1]
        if len(reply) == 4 and reply[0] is _ERR and all(type(x) is str for x in reply[1:]):
            raise remote_error(reply[1], reply[2], reply[3])
    raise UnmarshalError("not a reply message")
