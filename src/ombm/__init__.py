"""ombm: optimized memory-based messaging for Python (Cheriton & Kutter).

Processes talk through shared-memory *channel segments*. Writing a message
into a segment raises an *address-valued signal*: each receiver's handler is
called with the message's address translated into its own address space.

This module is the public API only; see docs/paper-map.md for which module
implements which section of the paper.
"""

from ombm.core import config as _config
from ombm.core.config import configure, settings
from ombm.errors import (
    AddressError,
    CallTimeout,
    ChannelBrokenError,
    ChannelTimeout,
    ClosedError,
    ForkedError,
    DirectoryFullError,
    EndOfStream,
    FolderSquattedWarning,
    FrameError,
    MessageTooLargeError,
    OmbmError,
    ReadOnlyError,
    RemoteError,
    SegmentExistsError,
    SegmentFormatError,
    SegmentNotFoundError,
    ServerGoneError,
    ServiceNotFoundError,
    SharedMemoryFullError,
    StreamProtocolError,
    UnmarshalError,
    WouldBlock,
)
from ombm.core.segment import (
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
from ombm.core.signals import Dispatcher, Receiver, SignalHandle, sig_wait, signal, signal_handler
from ombm.core.stats import stats
from ombm.channels.arrays import ArrayView
from ombm.channels.raw import RawChannel, RawFrame, RawStats, RawView
from ombm.channels.stream import Stream, StreamStats

from ombm import aio, rpc  # noqa: E402  (ombm.aio.sig_wait, ombm.rpc.Server, ombm.rpc.connect)

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
    "ForkedError",
    "DirectoryFullError",
    "Dispatcher",
    "FolderSquattedWarning",
    "FrameError",
    "MESSAGE_CONSISTENCY",
    "MessageTooLargeError",
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
    "SharedMemoryFullError",
    "SignalHandle",
    "StreamProtocolError",
    "UnmarshalError",
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
