"""The whole ombm exception tree.

Every error ombm raises derives from :class:`OmbmError` and also from the
builtin that fits, so ``except FileNotFoundError`` or ``except ValueError``
keeps working for callers who do not know ombm::

    OmbmError
    ├── SegmentNotFoundError      (FileNotFoundError)  open_segment of an absent name
    ├── SegmentExistsError        (FileExistsError)    create_segment of a taken name
    ├── SegmentFormatError        (ValueError)         foreign, truncated, stale or corrupt header
    ├── DirectoryFullError        (OSError)            every directory entry of a segment is held by a live process
    ├── SharedMemoryFullError     (OSError)            no room for a new segment or FIFO in /dev/shm (errno ENOSPC)
    ├── AddressError              (ValueError)         address/offset outside every bound region
    ├── ReadOnlyError             (PermissionError)    write through a read-only binding
    ├── ClosedError               (ValueError)         use of an unbound region / released segment / closed object
    │   └── ForkedError                                in a forked child: a client, server or channel of its parent
    ├── WouldBlock                (BlockingIOError)    a non-blocking send found the channel full
    ├── ChannelTimeout            (TimeoutError)       a channel operation timed out (nothing lost)
    ├── EndOfStream               (EOFError)           the writer closed and everything was delivered
    ├── ChannelBrokenError        (ConnectionError)    the peer went away, or the channel was released under us
    │   └── StreamProtocolError                        impossible credit, or an end of stream with messages missing
    ├── FrameError                (ValueError)         a frame failed its bounds or checksum checks
    │   └── DatagramError                              a bridge datagram failed its checks (.reason: malformed, bad_mac)
    ├── UnmarshalError            (ValueError)         bytes that are not a valid call or reply, or pickled data not allowed
    ├── MessageTooLargeError      (ValueError)         an RPC call or reply larger than the connection's max_message_bytes
    ├── ServiceNotFoundError      (ConnectionRefusedError)  rpc.connect to a service nobody serves
    ├── BridgeError               (ConnectionError)    the bridge could not import a remote name, or serve its folder
    │   ├── BridgeNotRunningError (+ ConnectionRefusedError) no bridge runs on this host (says how to start one)
    │   └── BridgeUnreachableError (+ TimeoutError)    the remote bridge did not answer
    ├── RemoteError               (Exception)          the remote procedure raised (.type_name, .message, .traceback);
    │                                                  of a builtin type, also that builtin: except KeyError works
    ├── CallTimeout               (TimeoutError)       no reply within the call's timeout
    │   └── ServerGoneError       (+ ChannelBrokenError) the server stopped or died while we waited
    └── FolderSquattedWarning     (UserWarning)        a warning, not raised: the per-user folder was
                                                       taken by someone else; ombm uses a private one

Misuse by the caller (an argument of the wrong type or value, an operation out of order) raises
the plain builtin (``TypeError``, ``ValueError``, ``RuntimeError``), as the standard library does.
The command line ends a command with a status by a ``SystemExit`` of its own (an exit, not an error).

Best-effort loss (a dropped signal, a bad checksum, a duplicate) is *not* an
exception (paper §3.2): it is counted in ``ombm.stats()`` and repaired by the
reliable layer above.
"""

from __future__ import annotations

import builtins
import sys


class OmbmError(Exception):
    """Base class of every ombm error."""


class SegmentNotFoundError(OmbmError, FileNotFoundError):
    """No segment of that name exists."""


class SegmentExistsError(OmbmError, FileExistsError):
    """A segment of that name already exists."""


class SegmentFormatError(OmbmError, ValueError):
    """The object is not a valid ombm segment (foreign, truncated, stale or corrupt)."""


class DirectoryFullError(OmbmError, OSError):
    """Every directory entry of the segment is in use by a live process."""


class SharedMemoryFullError(OmbmError, OSError):
    """The shared-memory filesystem has no room for a new segment or FIFO (``errno`` ENOSPC).

    Every page of a shared object is allocated when it is made, so a full ``/dev/shm`` is this
    error at creation, never a failure later in a write.
    """


class AddressError(OmbmError, ValueError):
    """An address or offset outside every bound region, or a range that overruns one."""


class ReadOnlyError(OmbmError, PermissionError):
    """A write through a read-only binding."""


class ClosedError(OmbmError, ValueError):
    """Use of something already closed, unbound or released (you closed it)."""


class ForkedError(ClosedError):
    """Use, in a forked child, of a connection, channel end, receiver or server its parent made.

    After ``os.fork`` such an object belongs to the parent alone (it holds a call-id space, a
    FIFO, a protocol state that two processes cannot share); in the child every use raises this
    and ``close()`` only forgets the child's copy. Make a new one in the child instead.
    """


class WouldBlock(OmbmError, BlockingIOError):
    """A non-blocking operation could not proceed without waiting."""


class ChannelTimeout(OmbmError, TimeoutError):
    """A channel operation did not complete within its timeout (nothing was lost)."""


class EndOfStream(OmbmError, EOFError):
    """The writer closed the channel and every message it sent was delivered."""


class ChannelBrokenError(OmbmError, ConnectionError):
    """The peer is gone or the channel was released by someone else (something else broke it)."""


class StreamProtocolError(ChannelBrokenError):
    """The other end of a stream, or another process writing its shared counts, broke the stream
    protocol: credit no receiver can give (an acknowledgement of what was never sent or moving
    back, a release beyond it), counts overwritten under their owner, or an end of stream whose
    counts do not add up (the message says how many messages are missing)."""


class FrameError(OmbmError, ValueError):
    """A frame failed its bounds, format or checksum checks."""


class DatagramError(FrameError):
    """A bridge datagram failed its checks (``ombm.transport.datagram``); ``reason`` says which kind
    of check, as the bridge counts it: ``"malformed"`` (bounds, format, CRC) or ``"bad_mac"``."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[type[DatagramError], tuple[str, str]]:
        return (type(self), (str(self), self.reason))


class UnmarshalError(OmbmError, ValueError):
    """Received bytes are not a valid call or reply (or hold pickled data not allowed)."""


class MessageTooLargeError(OmbmError, ValueError):
    """An RPC message larger than the connection allows (``max_message_bytes``): refused before
    anything is sent."""


class ServiceNotFoundError(OmbmError, ConnectionRefusedError):
    """rpc.connect found no server for the name."""


class BridgeError(OmbmError, ConnectionError):
    """The bridge of this host could not import a remote name (``name@HOST:PORT``): the remote bridge
    refused it, or this bridge may not ask that host (``docs/net.md``); or a bridge cannot start
    because another one already serves this host's folder."""


class BridgeNotRunningError(BridgeError, ConnectionRefusedError):
    """A remote name was used and no bridge runs on this host; the message names the command that
    starts one (``ombm bridge --listen HOST:PORT ...``)."""


class BridgeUnreachableError(BridgeError, TimeoutError):
    """The remote bridge did not answer in time (not running, not reachable, or it does not accept
    this host: not one of its ``--peer`` addresses, or another key)."""


class RemoteError(OmbmError):
    """The remote procedure raised; carries its type name, message and traceback text.

    What a client raises is made by :func:`remote_error`: for an exception of a builtin type
    (``KeyError``, ``ValueError``, ``ZeroDivisionError``, ...) an instance of a class that derives
    from both ``RemoteError`` and that builtin (``RemoteKeyError``), so ``except KeyError`` catches
    it; for any other type a plain ``RemoteError`` (its ``type_name`` says which).
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[object, tuple[str, str, str]]:
        return (remote_error, (self.type_name, self.message, self.traceback))


_remote_classes: dict[str, type[RemoteError]] = {}


def _remote_class(type_name: str) -> type[RemoteError]:
    """``RemoteError``, or its subclass that is also the builtin exception named ``type_name``."""
    known = _remote_classes.get(type_name)
    if known is not None:
        return known
    builtin = getattr(builtins, type_name, None) if type_name.isidentifier() else None
    if not (isinstance(builtin, type) and issubclass(builtin, Exception)):
        return RemoteError
    made: type[RemoteError] = RemoteError
    try:  # a builtin whose constructor or layout does not allow it (UnicodeDecodeError) stays plain
        cls = type(f"Remote{type_name}", (RemoteError, builtin),
                   {"__module__": __name__, "__str__": BaseException.__str__,  # KeyError's would quote it
                    "__doc__": f"A remote {type_name}: both RemoteError and {type_name}."})
        cls(type_name, "", "")
        made = cls
    except TypeError:
        pass
    _remote_classes[type_name] = made  # builtin exception names only: bounded, whatever a peer sends
    return made


def remote_error(type_name: str, message: str, traceback: str = "") -> RemoteError:
    """The exception a client raises for a remote one (see :class:`RemoteError`); the remote
    traceback is ``.traceback``, and from Python 3.11 also a note shown under the local one."""
    error = _remote_class(type_name)(type_name, message, traceback)
    if traceback and sys.version_info >= (3, 11):
        error.add_note("the remote traceback:\n" + traceback.rstrip("\n"))
    return error


class CallTimeout(OmbmError, TimeoutError):
    """No reply arrived within the call's timeout."""


class ServerGoneError(CallTimeout, ChannelBrokenError):
    """The RPC server stopped or died: both a CallTimeout and a ConnectionError."""


class FolderSquattedWarning(OmbmError, UserWarning):
    """Issued (``warnings.warn``), not raised: ``<SHM_ROOT>/ombm-<uid>`` is not a 0700 folder of ours
    (another user's, a symbolic link, a file, or open to others), so ombm uses the user's private
    fallback folder instead (docs/design.md, "Who can reach a user's objects")."""
