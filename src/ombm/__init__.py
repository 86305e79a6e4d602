"""ombm: optimized memory-based messaging for Python (Cheriton & Kutter).

Processes talk through shared-memory *channel segments*. Writing a message
into a segment raises an *address-valued signal*: each receiver's handler is
called with the message's address translated into its own address space.

This module is the public API only; see docs/paper-map.md for which module
implements which section of the paper.
"""

from . import config as _config
from .config import configure, settings
from .errors import (
    AddressError,
    CallTimeout,
    ChannelBrokenError,
    ChannelTimeout,
    ClosedError,
    EndOfStream,
    FrameError,
    OmbmError,
    ReadOnlyError,
    RemoteError,
    SegmentExistsError,
    SegmentFormatError,
    SegmentNotFoundError,
    ServerGoneError,
    ServiceNotFoundError,
    WouldBlock,
)
from .segment import (
    CACHE_LINE,
    CONVENTIONAL,
    MESSAGE_CONSISTENCY,
    PAGE,
    Mode,
    Region,
    Segment,
    create_segment,
    open_segment,
)
from .signals import Dispatcher, Receiver, SignalHandle, sig_wait, signal, signal_handler
from .stats import stats
from .arrays import ArrayView
from .channel import RawChannel, RawFrame, RawStats, RawView
from .stream import Stream, StreamStats

from . import aio, rpc  # noqa: E402  (ombm.aio.sig_wait, ombm.rpc.Server, ombm.rpc.connect)

__version__ = "0.1.0"

__all__ = [
    "AddressError",
    "ArrayView",
    "ChannelTimeout",
    "EndOfStream",
    "RawChannel",
    "RawFrame",
    "RawStats",
    "RawView",
    "Stream",
    "StreamStats",
    "CACHE_LINE",
    "CONVENTIONAL",
    "CallTimeout",
    "ChannelBrokenError",
    "ClosedError",
    "Dispatcher",
    "FrameError",
    "MESSAGE_CONSISTENCY",
    "Mode",
    "OmbmError",
    "PAGE",
    "ReadOnlyError",
    "Receiver",
    "Region",
    "RemoteError",
    "Segment",
    "SegmentExistsError",
    "SegmentFormatError",
    "SegmentNotFoundError",
    "ServerGoneError",
    "ServiceNotFoundError",
    "SignalHandle",
    "WouldBlock",
    "aio",
    "configure",
    "create_segment",
    "open_segment",
    "rpc",
    "settings",
    "sig_wait",
    "signal",
    "signal_handler",
    "stats",
]
del _config
