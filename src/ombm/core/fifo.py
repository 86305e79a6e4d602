"""Per-receiver signal FIFOs (paper §3.1.2, DESIGN.md §2, §6).

A :class:`Fifo` is the paper's per-processor 128-entry signal FIFO, one per
receiving thread: a bounded multi-producer ring in a shared file (layout in
``_layout``), pushed to by any sender with one CAS, dropping (and counting)
when full. The receiver sleeps on the FIFO's futex word once its spin budget
is spent; a sender pays the wake-up system call only if the word says so.

Two kernel-assisted variants share the file:

* the **software-only path** (paper §5.1): the FIFO is flagged ``KERNEL`` and
  every signal is a ``sendto`` on the receiver's Unix datagram socket (a
  kernel queue); the receiver blocks in ``recv``;
* the **doorbell** for event loops: a receiver sleeping in asyncio sets its
  sleep word to 2 and a sender rings the same socket with one byte.

That socket is a file ``sock-<token>`` (mode 0600) in the per-user 0700
folder, next to the FIFO: only this user's processes can send to it (another
user's ``sendto`` fails with EACCES at the folder), so no one else can flood
the queue. It is unlinked on close; ``ombm gc`` removes those nobody holds.

:class:`FifoRef` is a sender's handle on someone else's FIFO.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import struct
import weakref

from ombm import _layout as L
from ombm import _native
from ombm.core import namespace
from ombm.core.mapping import map_file, reserve_file
from ombm.core.stats import COUNTERS
from ombm.errors import SegmentFormatError

_SIGNAL = struct.Struct("<QQ")  # kernel-path datagram: segment id, offset
DEFAULT_CAPACITY = 128


def _check_capacity(capacity: object) -> int:
    if not isinstance(capacity, int) or isinstance(capacity, bool):
        raise TypeError("fifo capacity must be an int")
    if capacity < 2 or capacity > 1 << 20 or capacity & (capacity - 1):
        raise ValueError("fifo capacity must be a power of two between 2 and 2**20")
    return capacity


class Fifo:
    """The receiving side: owns the FIFO file (and socket) of one receiver."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, kernel: bool = False) -> None:
        capacity = _check_capacity(capacity)
        self.token = namespace.new_token()
        self.owner_pid = os.getpid()  # a forked child must never unlink its parent's FIFO
        self.capacity = capacity
        self.kernel = kernel
        self.path = namespace.fifo_path(self.token)
        self.sock: socket.socket | None = None
        self.sock_address = ""  # the socket's path once bound (by the process _sock_pid)
        self._sock_pid = 0
        self._mm: mmap.mmap | None = None
        self._closed = False
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            reserve_file(fd, L.fifo_size(capacity), f"a signal FIFO of {capacity} entries")
            self._mm = map_file(fd, L.fifo_size(capacity), writable=True)  # holds no descriptor
            self.address = _native.addr_of(self._mm)
            self.fifo_map = _native.FifoMap(self._mm, capacity)  # the geometry, from our own side
            cells = memoryview(self._mm)[L.FIFO_CELLS :].cast("Q")
            cells[0::4] = memoryview(bytearray(struct.pack(f"<{capacity}Q", *range(capacity)))).cast("Q")
            cells.release()
            if kernel:
                self._open_socket()
            pid, start = namespace.me()
            flags = L.FIFO_FLAG_KERNEL if kernel else 0
            header = L.FIFO_HEADER.pack(b"\0" * 8, L.FIFO_VERSION, capacity, pid, flags, start, self.token, 0)
            self._mm[: L.FIFO_HEADER.size] = header
            self._mm[:8] = L.FIFO_MAGIC  # published last: a half-made FIFO has no magic
        except BaseException:
            os.close(fd)
            self.close()
            raise
        os.close(fd)

    def _open_socket(self) -> socket.socket:
        if self.sock is None:
            address = namespace.socket_address(namespace.socket_name(self.token))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                try:
                    sock.bind(address)
                except OSError as e:
                    if e.errno != errno.EADDRINUSE:
                        raise
                    # a dead receiver's socket under our token (ours: we created fifo-<token> O_EXCL)
                    os.unlink(address)
                    sock.bind(address)
                os.chmod(address, 0o600)  # the 0700 folder already shuts others out; this says so too
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            self.sock, self.sock_address, self._sock_pid = sock, address, os.getpid()
        return self.sock

    def doorbell(self) -> socket.socket:
        """The socket an event loop waits on (created on first use)."""
        return self._open_socket()

    # -- consumer operations
    def pop(self) -> tuple[int, int] | None:
        if self.kernel:
            sock: socket.socket = self.sock  # type: ignore[assignment]  # a kernel FIFO's socket: None once closed
            try:
                data = sock.recv(64)
            except BlockingIOError:
                return None
            return _SIGNAL.unpack(data) if len(data) == _SIGNAL.size else (L.NUDGE_SEGMENT, 0)
        return _native.fifo_pop(self.fifo_map)

    def pop_wait(self, timeout: float) -> tuple[int, int] | None:
        """Software-only path: block in the kernel until a signal arrives or ``timeout``."""
        sock: socket.socket = self.sock  # type: ignore[assignment]  # a kernel FIFO's socket: None once closed
        sock.settimeout(timeout)
        try:
            data = sock.recv(64)
        except (TimeoutError, BlockingIOError):
            return None
        finally:
            sock.setblocking(False)
        return _SIGNAL.unpack(data) if len(data) == _SIGNAL.size else (L.NUDGE_SEGMENT, 0)

    def drain_doorbell(self) -> None:
        if self.sock is None or self.kernel:
            return
        try:
            while self.sock.recv(64):
                pass
        except BlockingIOError:
            pass

    def depth(self) -> int:
        # (the head may pass the tail by one for a moment: a push moves the tail after publishing)
        return max(_native.load64(self.address + L.FIFO_TAIL) - _native.load64(self.address + L.FIFO_HEAD), 0)

    def ready(self) -> bool:
        """Whether the head entry is published (a seq_cst load: the re-check after announcing sleep)."""
        return _native.fifo_ready(self.fifo_map)

    def retire_stalled(self) -> bool:
        """Retire the head cell if its producer died between claim and publish (True; counted)."""
        if _native.fifo_skip_stalled(self.fifo_map):
            COUNTERS.signals_stalled += 1
            return True
        return False

    def close(self) -> None:
        """Idempotent: unlink the file (only in the creating process) and close the socket.

        The mapping itself stays until this object is garbage-collected: another thread
        may still be inside a native wait on it (one that holds the receiver, hence this
        object), and unmapping under it would crash the process.
        """
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self.owner_pid:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self.sock is not None:
            if self._sock_pid == os.getpid():
                try:
                    os.unlink(self.sock_address)
                except FileNotFoundError:
                    pass
            self.sock.close()
            self.sock = None

    @property
    def closed(self) -> bool:
        return self._closed


class FifoRef:
    """A sender's mapping of another receiver's FIFO, validated as hostile input."""

    _conn: socket.socket | None = None

    def __init__(self, token: int) -> None:
        self.token = token
        path = namespace.fifo_path(token)
        self.sock_address = namespace.socket_address(namespace.socket_name(token))
        fd = os.open(path, os.O_RDWR)  # FileNotFoundError: the receiver is gone
        try:
            st = os.fstat(fd)
            if st.st_size < L.FIFO_CELLS:
                raise SegmentFormatError(f"{path}: truncated signal FIFO")
            head = os.pread(fd, L.FIFO_HEADER.size, 0)
            magic, version, capacity, pid, flags, start, tok, _ = L.FIFO_HEADER.unpack(head)
            if magic != L.FIFO_MAGIC or version != L.FIFO_VERSION or tok != token:
                raise SegmentFormatError(f"{path}: not an ombm signal FIFO (or not ready yet)")
            if capacity < 2 or capacity & (capacity - 1) or L.fifo_size(capacity) > st.st_size:
                raise SegmentFormatError(f"{path}: bad FIFO capacity {capacity}")
            self.mm = map_file(fd, L.fifo_size(capacity), writable=True)  # holds no descriptor
        finally:
            os.close(fd)
        self.address = _native.addr_of(self.mm)
        # the capacity validated above, once: no push reads it from the file again
        self.fifo_map = _native.FifoMap(self.mm, capacity)
        self.pid, self.start = pid, start
        self.checked_at = 0.0  # last liveness check (monotonic), see Router._check_alive
        self.kernel = bool(flags & L.FIFO_FLAG_KERNEL)

    def send_kernel(self, segment_id: int, offset: int) -> bool:
        """Software-only path: one system call into the receiver's kernel queue. False if dropped."""
        return self._send(_SIGNAL.pack(segment_id, offset))

    def ring(self) -> bool:
        """Wake a receiver sleeping in an event loop."""
        return self._send(b"\1")

    def _connect(self) -> socket.socket:
        """A datagram socket connected to the receiver's, made on first use: ``send`` on it skips the
        path lookup a ``sendto`` would pay on every signal. Closed when this mapping goes."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            conn.setblocking(False)
            conn.connect(self.sock_address)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        weakref.finalize(self, conn.close)  # closing twice (see _disconnect) is harmless
        return conn

    def _send(self, data: bytes) -> bool:
        try:
            (self._conn or self._connect()).send(data)
            return True
        except (BlockingIOError, FileNotFoundError):
            return False
        except ConnectionRefusedError:
            self._disconnect()  # the receiver closed its socket: connect again next time (or find it dead)
            return False
        except OSError as e:
            if e.errno in (errno.ENOBUFS, errno.EAGAIN, errno.ENOENT):
                return False
            if e.errno == errno.ECONNREFUSED:
                self._disconnect()
                return False
            raise

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def alive(self) -> bool:
        return namespace.is_alive(self.pid, self.start)

    def add_drop(self) -> None:
        _native.fetch_add64(self.address + L.FIFO_DROPS, 1)

