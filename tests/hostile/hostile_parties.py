"""The parties of the hostile-peer suite (test_hostile_peers.py), each run in a spawned process.

Every party talks to the test through one ``multiprocessing`` connection: it sends
``("ready", info)`` once set up, answers ``"status"`` with ``("status", report)`` between two of
its operations (a party that does not answer hangs), takes commands (``"restart"`` for a server),
and on SIGTERM finishes its operation, closes what it holds, sends ``("result", report)`` and exits
with status 0. A report is ``{"pid", "counts", "problems", ...}``: ``counts`` says what happened
(results checked, documented errors by name, reconnections), ``problems`` what must not happen (a
wrong result, an exception no ombm document names for that party, a party's thread that died).

The hostile peer (:class:`Hostile`) runs seeded rounds of attacks on every kind of shared object
it finds in the per-user folder; see :data:`ATTACKS`. Objects whose owner (the pid recorded in
their header when first seen) is a protected party are never attacked: the bystanders.

The functions live here, not in the test module, so that spawned children can import them (pytest
puts this folder on ``sys.path``; spawned children inherit it).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import random
import re
import signal
import socket
import stat
import struct
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from typing import Any

import msgpack

import ombm
from ombm import _layout as L
from ombm import _native
from ombm.core import admin, namespace
from ombm.core.fifo import FifoRef
from ombm.channels.raw import CONTROL_SIZE, RawChannel, control_offset
from ombm.channels.stream import CREDIT_FIRST, CREDIT_SIZE, CREDIT_SUFFIX, Stream
from ombm.transport import wire
from ombm.transport.wire import TRAILER_SIZE

# ---------------------------------------------------------------- the attacks
# Every kind of attack the hostile peer knows, all switched on. "truncate" cuts an object short
# under the processes that map it: that killed them with SIGBUS until the SIGBUS guard
# (core/mapping.py, _native/mapping.c); now their mapping turns to zero pages and the channel ends
# with ChannelBrokenError. The test checks that every kind in ATTACKS ran.
ATTACKS = ("header", "directory", "slots", "frames", "control", "stream_data", "credit", "raw_units", "fifo",
           "signal", "forge", "junk", "admin", "record", "own", "truncate")

# What a party may see when the objects it uses were attacked: the documented outcomes. Anything
# else (another exception, a wrong result) is a problem. A bystander may see none of them.
CLIENT_OK = (ombm.CallTimeout, ombm.ChannelBrokenError, ombm.ServiceNotFoundError, ombm.DirectoryFullError,
             ombm.SegmentFormatError, ombm.SegmentNotFoundError)
STREAM_OK = (ombm.ChannelTimeout, ombm.ChannelBrokenError, ombm.EndOfStream, ombm.FrameError,
             ombm.SegmentFormatError, ombm.SegmentNotFoundError, ombm.SegmentExistsError, ombm.DirectoryFullError)
RAW_OK = (ombm.ChannelTimeout, ombm.ChannelBrokenError, ombm.EndOfStream, ombm.SegmentFormatError,
          ombm.SegmentNotFoundError, ombm.SegmentExistsError, ombm.DirectoryFullError)
HOSTILE_OK = (ombm.SegmentFormatError, ombm.SegmentNotFoundError, ombm.DirectoryFullError, ombm.ChannelBrokenError)

MAX_PROBLEMS = 20  # a party keeps the first ones (with their tracebacks)


# ---------------------------------------------------------------- the party skeleton
class Party:
    """One process of the suite: answers the test between operations, stops on SIGTERM."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.stopping = False
        self.counts: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        signal.signal(signal.SIGTERM, self._on_sigterm)
        threading.excepthook = self._on_thread_exception

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_thread_exception(self, args: threading.ExceptHookArgs) -> None:
        text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        self.problem(f"thread {args.thread.name if args.thread else '?'} died:\n{text}")

    def problem(self, text: str) -> None:
        self.counts["problems"] += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text[-4000:])

    def unexpected(self, what: str) -> None:
        self.problem(f"{what}:\n{traceback.format_exc()}")

    def report(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "counts": dict(self.counts), "problems": list(self.problems)}

    def answer(self) -> None:
        """Answer the test's messages that came meanwhile (never waits)."""
        while self.conn.poll():
            message = self.conn.recv()
            if message == "status":
                self.conn.send(("status", self.report()))
            else:
                self.command(message)

    def command(self, message: Any) -> None:
        self.problem(f"unknown command {message!r}")

    def pause(self, seconds: float) -> None:
        """Sleep in slices, answering the test."""
        end = time.monotonic() + seconds
        while not self.stopping:
            self.answer()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.02))

    def run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def run_party(conn: Any, cls: type[Party], *args: Any) -> None:
    """A party's process: build it, run it until SIGTERM, close it and say how it went."""
    party = cls(conn, *args)
    try:
        party.run()
    except BaseException:
        party.unexpected("the party failed")
    finally:
        try:
            party.close()
        except BaseException:
            party.unexpected("closing the party failed")
        conn.send(("result", party.report()))


# ---------------------------------------------------------------- RPC
class Calc:
    def add(self, a: int, b: int) -> int:
        return a + b

    def echo(self, data: bytes) -> bytes:
        return data


class ServerParty(Party):
    """Serves ``Calc`` as ``service`` (in the server's own thread); ``"restart"`` makes a new Server."""

    def __init__(self, conn: Any, service: str) -> None:
        super().__init__(conn)
        self.service = service
        self.server: ombm.rpc.Server | None = None

    def _start(self) -> None:
        try:
            self.server = ombm.rpc.Server(self.service, Calc()).start()
        except ombm.OmbmError as exc:  # the name is still taken (our old one being reclaimed): again later
            self.counts[f"start {type(exc).__name__}"] += 1
            self.server = None

    def run(self) -> None:
        self._start()
        self.conn.send(("ready", {"pid": os.getpid()}))
        while not self.stopping:
            self.pause(0.05)
            if self.server is None:
                self._start()

    def command(self, message: Any) -> None:
        if message != "restart":
            super().command(message)
            return
        self.counts["restarts"] += 1
        server, self.server = self.server, None
        if server is not None:
            self._add_stats(server)
            server.stop()
        self._start()

    def _add_stats(self, server: ombm.rpc.Server) -> None:
        for key, value in server.stats.items():
            self.counts[f"server {key}"] += value

    def report(self) -> dict[str, Any]:
        out = super().report()
        thread = getattr(self.server, "_thread", None)
        out["serving"] = self.server is not None and thread is not None and thread.is_alive()
        if self.server is not None:  # the running server's counts too
            counts = collections.Counter(out["counts"])
            counts.update({f"server {key}": value for key, value in self.server.stats.items()})
            out["counts"] = dict(counts)
        return out

    def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            self._add_stats(server)
            server.stop()


def expected(method: str, args: tuple[Any, ...]) -> Any:
    return args[0] + args[1] if method == "add" else args[0]


class ClientParty(Party):
    """Calls ``service`` throughout and checks every result. ``strict``: a bystander, whose objects
    nobody attacks: any error at all is a problem. Otherwise a documented error (CLIENT_OK) makes
    it close the connection and connect again; ``connect_failures`` counts failed connects in a row."""

    def __init__(self, conn: Any, service: str, seed: int, strict: bool, timeout_s: float, pace_s: float,
                 settings: dict[str, Any] | None = None) -> None:
        super().__init__(conn)
        ombm.configure(**(settings or {}))  # e.g. the software-only signal path (its kernel socket)
        self.service, self.strict, self.timeout_s, self.pace_s = service, strict, timeout_s, pace_s
        self.rng = random.Random(seed)
        self.client: Any = None
        self.connect_failures = 0

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["connect_failures"] = self.connect_failures
        return out

    def _connect(self) -> None:
        try:
            self.client = ombm.rpc.connect(self.service, timeout=self.timeout_s, slots=8, slot_size=4096)
            self.connect_failures = 0
            self.counts["connects"] += 1
        except CLIENT_OK as exc:
            self.connect_failures += 1
            self.counts[f"connect {type(exc).__name__}"] += 1
            if self.strict:
                self.unexpected("a bystander could not connect")
            self.pause(0.05)
        except Exception:
            self.connect_failures += 1
            self.unexpected("connect raised an undocumented exception")
            self.pause(0.05)

    def _drop(self) -> None:
        client, self.client = self.client, None
        try:
            client.close()
        except Exception:
            self.unexpected("closing a client raised")

    def _one_call(self) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            method, args = "add", (rng.getrandbits(62), rng.getrandbits(62))
        else:
            size = rng.choice((0, 1, 47, 100, 1000, 4030, 4040, 9000, 15000))  # up to 4 slots of 4048 bytes
            method, args = "echo", (rng.randbytes(size),)
        if rng.random() < 0.8:
            result = getattr(self.client, method)(*args)  # the call lane when nothing else is outstanding
        else:
            result = self.client.call_async(method, *args).result()  # the protocol's path
        if result != expected(method, args):
            self.problem(f"WRONG RESULT: {method}{tuple(a if isinstance(a, int) else len(a) for a in args)} "
                         f"returned {result!r:.200}")
        else:
            self.counts["calls ok"] += 1

    def run(self) -> None:
        self._connect()
        self.conn.send(("ready", {"pid": os.getpid(), "connected": self.client is not None}))
        while not self.stopping:
            self.answer()
            if self.client is None:
                self._connect()
                continue
            try:
                self._one_call()
            except CLIENT_OK as exc:
                self.counts[f"call {type(exc).__name__}"] += 1
                if self.strict:
                    self.unexpected("a bystander's call failed")
                self._drop()
                continue
            except Exception:
                self.unexpected("a call raised an undocumented exception")
                self._drop()
                continue
            if self.pace_s:
                time.sleep(self.pace_s)

    def close(self) -> None:
        if self.client is not None:
            self._drop()


# ---------------------------------------------------------------- streams
def stream_message(generation: int, index: int) -> bytes:
    """Message ``index`` of stream generation ``generation``: deterministic, of varied length (up to
    three fragments of a 4 KiB slot)."""
    size = (index * 2654435761 + generation) % 12000
    seed = hashlib.blake2b(struct.pack("<QQ", generation, index), digest_size=16).digest()
    body = (seed * (size // 16 + 1))[:size]
    return struct.pack("<QQ", generation, index) + body


STREAM_MESSAGES = 40
STREAM_END = b"END"


class GenerationParty(Party):
    """Writes, or reads, generations ``<prefix>-<k>`` of a channel, one after the other: a writer
    publishes the one it writes in ``generation`` (shared), a reader follows the latest. A
    documented error (``ok``) ends a generation early, and the party goes on with the next."""

    ok: tuple[type[Exception], ...] = ()
    role = "writer"

    def __init__(self, conn: Any, prefix: str, generation: Any) -> None:
        super().__init__(conn)
        self.prefix, self.generation = prefix, generation

    def _next(self, k: int) -> int | None:
        """The generation to take after ``k``, or None if there is none yet."""
        if self.role == "writer":
            return k + 1
        latest: int = self.generation.value
        return latest if latest > k else None

    def _one(self, k: int) -> None:
        raise NotImplementedError

    def run(self) -> None:
        self.conn.send(("ready", {"pid": os.getpid()}))
        k = -1
        while not self.stopping:
            after = self._next(k)
            if after is None:
                self.pause(0.01)
                continue
            k = after
            try:
                self._one(k)
            except self.ok as exc:
                self.counts[f"{self.role} {type(exc).__name__}"] += 1
            except Exception:
                self.unexpected(f"{type(self).__name__} raised an undocumented exception")
            finally:
                self.close()


class StreamWriterParty(GenerationParty):
    """Writes stream generations: STREAM_MESSAGES messages then STREAM_END, then closes."""

    ok = STREAM_OK

    def __init__(self, conn: Any, prefix: str, generation: Any) -> None:
        super().__init__(conn, prefix, generation)
        self.stream: Stream | None = None

    def _send(self, data: bytes) -> None:
        stream = self.stream
        assert stream is not None
        for _ in range(5):
            try:
                stream.send(data, timeout=1.0)
                return
            except ombm.ChannelTimeout as exc:
                self.counts["send ChannelTimeout"] += 1
                if getattr(exc, "partial", False):  # the rest goes first with the next send
                    stream.flush(timeout=1.0)
                    return
            if self.stopping:
                break
            self.answer()
        raise ombm.ChannelTimeout("the reader took nothing for 5 s")

    def _one(self, k: int) -> None:
        self.stream = Stream.create(f"{self.prefix}-{k}", slot_bytes=4096, slots=4)
        self.generation.value = k
        for i in range(STREAM_MESSAGES):
            if self.stopping:
                return
            self.answer()
            self._send(stream_message(k, i))
        self._send(STREAM_END)
        self.counts["streams written"] += 1

    def close(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            try:
                stream.close(flush_timeout=0.0 if self.stopping else 1.0)
            except Exception:
                self.unexpected("closing a stream writer raised")


class StreamReaderParty(GenerationParty):
    """Reads the writer's latest generation and checks every message: in order, unchanged. A stream
    whose objects were attacked may end early (a documented error, or a clean end before
    STREAM_END when its writer's counts were rewritten); never with a wrong message."""

    ok = STREAM_OK
    role = "reader"

    def _one(self, k: int) -> None:
        with Stream.open(f"{self.prefix}-{k}", timeout=1.0) as stream:
            index = 0
            while not self.stopping:
                self.answer()
                try:
                    message = stream.recv(timeout=0.5)
                except ombm.ChannelTimeout:
                    self.counts["recv ChannelTimeout"] += 1
                    if self.generation.value > k + 1:
                        return  # the writer gave this one up long ago
                    continue
                except ombm.EndOfStream:
                    self.counts["ended early"] += 1
                    return
                if bytes(message) == STREAM_END:
                    try:
                        stream.recv(timeout=2.0)
                        self.problem(f"stream {k}: a message after the end")
                    except ombm.EndOfStream:
                        self.counts["streams read whole"] += 1
                    return
                if bytes(message) != stream_message(k, index):
                    head = struct.unpack_from("<QQ", message) if len(message) >= 16 else ()
                    self.problem(f"WRONG MESSAGE: stream {k} message {index}: got {len(message)} bytes, "
                                 f"header {head}")
                    return
                index += 1
                self.counts["messages ok"] += 1


# ---------------------------------------------------------------- raw channels
RAW_UNIT = 256
_RAW_HEAD = struct.Struct("<QQI")  # generation, frame number, crc32 of the rest


def raw_frame(rng: random.Random, k: int, n: int) -> bytes:
    body = rng.randbytes(rng.randrange(RAW_UNIT - _RAW_HEAD.size))
    return _RAW_HEAD.pack(k, n, zlib.crc32(body)) + body


def raw_frame_ok(data: bytes) -> bool:
    if len(data) < _RAW_HEAD.size:
        return False
    _k, _n, crc = _RAW_HEAD.unpack_from(data)
    return zlib.crc32(data[_RAW_HEAD.size:]) == crc


class RawWriterParty(GenerationParty):
    """Writes raw channel generations, a new one every second."""

    ok = RAW_OK

    def __init__(self, conn: Any, prefix: str, generation: Any, seed: int) -> None:
        super().__init__(conn, prefix, generation)
        self.rng = random.Random(seed)
        self.channel: RawChannel | None = None

    def _one(self, k: int) -> None:
        self.channel = channel = RawChannel.create(f"{self.prefix}-{k}", unit_size=RAW_UNIT, units=8)
        self.generation.value = k
        end, n = time.monotonic() + 1.0, 0
        while not self.stopping and time.monotonic() < end:
            self.answer()
            channel.write(raw_frame(self.rng, k, n))
            n += 1
            self.counts["frames written"] += 1
            time.sleep(0.001)

    def close(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.close()


class RawReaderParty(GenerationParty):
    """Reads the raw writer's latest generation. A raw channel has no checksum (paper §4: raw
    video): a frame whose memory was written by someone else is delivered as it is, so a frame that
    fails the application's own check is counted ("damaged"), not a problem."""

    ok = RAW_OK
    role = "reader"

    def __init__(self, conn: Any, prefix: str, generation: Any, seed: int) -> None:
        super().__init__(conn, prefix, generation)
        self.rng = random.Random(seed)

    def _one(self, k: int) -> None:
        with RawChannel.open(f"{self.prefix}-{k}", timeout=1.0) as channel:
            while not self.stopping and self.generation.value == k:
                self.answer()
                try:
                    frame = channel.recv(timeout=0.2)
                except ombm.ChannelTimeout:
                    self.counts["recv ChannelTimeout"] += 1
                    continue
                self.counts["frames ok" if raw_frame_ok(bytes(frame.data)) else "frames damaged"] += 1
                if self.rng.random() < 0.05:
                    frame = channel.read(self.rng.randrange(channel.units))
                    if frame is not None and not raw_frame_ok(bytes(frame.data)):
                        self.counts["frames damaged"] += 1


# ---------------------------------------------------------------- the hostile peer
U64 = (1 << 64) - 1
_SEG_FIELDS = ((0, 8), (8, 4), (12, 4), (16, 8), (24, 4), (28, 4), (32, 8), (40, 4), (44, 4), (48, 8), (56, 8))
_ENTRY_FIELDS = ((0, 4), (4, 4), (8, 4), (12, 4), (16, 8), (24, 8), (32, 8), (40, 8))
_TRAILER_FIELDS = ((0, 8), (8, 8), (16, 8), (24, 4), (28, 4), (32, 2), (34, 2), (36, 1), (37, 1), (38, 2), (40, 8))
_CONTROL_FIELDS = ((0, 8), (8, 4), (12, 4), (16, 8), (24, 8), (32, 8), (40, 8), (48, 4), (52, 4), (56, 8), (64, 8),
                   (72, 8), (80, 8), (88, 8))
_CREDIT_FIELDS = ((0, 8), (8, 8), (16, 8), (24, 8), (32, 4), (40, 8), (48, 8))
_RAW_UNIT_FIELDS = ((-32, 8), (-24, 8), (-16, 4), (-12, 4), (-8, 8))
_FIFO_FIELDS = ((0, 8), (8, 4), (12, 4), (16, 4), (20, 4), (24, 8), (32, 8), (40, 8), (L.FIFO_TAIL, 8),
                (L.FIFO_HEAD, 8), (L.FIFO_SLEEP, 4))
_SERVICE = re.compile(r"rpc-(?P<service>[A-Za-z0-9_.-]+?)(?:-(?P<nonce>[0-9a-f]{16})-(?P<dir>req|rep))?")


def _packb(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value)
    return packed


class Target:
    """A shared object the hostile peer found: its file, what it is, who owns it."""

    __slots__ = ("path", "ino", "kind", "role", "owner", "segment_id", "size", "unit", "token", "kernel")

    def __init__(self, path: str, ino: int, kind: str, role: str, owner: int, segment_id: int = 0, size: int = 0,
                 unit: int = 0, token: int = 0, kernel: bool = False) -> None:
        self.path, self.ino, self.kind, self.role, self.owner = path, ino, kind, role, owner
        self.segment_id, self.size, self.unit, self.token, self.kernel = segment_id, size, unit, token, kernel


def _role(name: str, prefixes: dict[str, str]) -> str:
    if name.endswith(CREDIT_SUFFIX):
        return "credit"
    for role, prefix in prefixes.items():
        if name.startswith(prefix):
            return role
    match = _SERVICE.fullmatch(name)
    if match:
        return {"req": "request", "rep": "reply", None: "well_known"}[match.group("dir")]
    return "segment"


class Hostile(Party):
    """Runs seeded rounds of attacks on every kind of shared object in the per-user folder.

    ``("rounds", n)`` runs ``n`` rounds and answers ``("done", summary)``. A round picks an attack
    kind (ATTACKS), an unprotected object it applies to, and what to write: a random word, a bit
    flip, or an interesting value (0, all ones, the top bit, huge lengths, offsets and capacities,
    the current value plus or minus one, a live process's pid, a FIFO's token, a segment's id).
    Most rounds are transient: the old bytes are put back after a short while (a peer's write that
    another one overwrote; it keeps objects usable, so later rounds meet live traffic); the others
    leave their damage.
    """

    def __init__(self, conn: Any, seed: int, protected: list[int], live: list[int], prefixes: dict[str, str],
                 attacks: tuple[str, ...]) -> None:
        super().__init__(conn)
        self.rng = random.Random(seed)
        self.protected = set(protected) | {os.getpid()}  # its own objects are attacked by "own" only
        self.live = live
        self.prefixes = prefixes
        # the record naming this user's private folder, which a process reads when it starts
        self.record = os.path.join(os.environ["XDG_RUNTIME_DIR"], "ombm", namespace._record_name())
        self.attacks = attacks
        self.folder = namespace.folder()
        self.targets: dict[int, Target] = {}  # by inode, classified when first seen
        self.segments: dict[int, tuple[ombm.Segment, ombm.Region]] = {}  # opened to signal, by inode
        self.fifo_refs: dict[int, FifoRef] = {}  # mapped to forge entries, by inode
        self.junk: list[str] = []
        self.applied: collections.Counter[str] = collections.Counter()
        self.round = 0
        self.own_n = 0
        self.own: tuple[ombm.Segment, ombm.Region, ombm.Receiver] | None = None
        self.own_signals = 0

    # ---- finding objects
    def scan(self) -> None:
        seen = set()
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            path = os.path.join(self.folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            seen.add(st.st_ino)
            if st.st_ino not in self.targets:
                target = self._classify(name, path, st)
                if target is not None:
                    self.targets[st.st_ino] = target
        for ino in [i for i in self.targets if i not in seen]:
            del self.targets[ino]
        for ino in [i for i in self.segments if i not in seen]:
            seg, region = self.segments.pop(ino)
            self._release(seg)
        for ino in [i for i in self.fifo_refs if i not in seen]:
            del self.fifo_refs[ino]

    def _classify(self, name: str, path: str, st: os.stat_result) -> Target | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            head = os.pread(fd, 64, 0)
        except OSError:
            return None
        finally:
            os.close(fd)
        if name.startswith("seg-") and len(head) == 64 and head[:8] == L.SEG_MAGIC:
            fields = L.SEG_HEADER.unpack(head)
            seg_name = name[4:]
            return Target(path, st.st_ino, "segment", _role(seg_name, self.prefixes), fields[7], segment_id=fields[6],
                          size=fields[3], unit=fields[4])
        if name.startswith("fifo-") and len(head) >= 48 and head[:8] == L.FIFO_MAGIC:
            fields = L.FIFO_HEADER.unpack_from(head)
            return Target(path, st.st_ino, "fifo", "fifo", fields[3], token=fields[6],
                          kernel=bool(fields[4] & L.FIFO_FLAG_KERNEL))
        return None

    def _pick(self, want: Callable[[Target], bool]) -> Target | None:
        found = [t for t in self.targets.values() if t.owner not in self.protected and want(t)]
        return self.rng.choice(found) if found else None

    # ---- values
    def _value(self, width: int, current: int) -> int:
        rng, bits = self.rng, width * 8
        top = (1 << bits) - 1
        how = rng.random()
        if how < 0.25:
            return rng.getrandbits(bits)
        if how < 0.4:
            return current ^ (1 << rng.randrange(bits))
        if how < 0.55:
            return (current + rng.choice((-2, -1, 1, 2, 64, -64))) & top
        choices = [0, 1, 2, top, top - 1, 1 << (bits - 1), (1 << (bits - 1)) - 1, 64, 4096, 1 << 20]
        if bits >= 32:
            choices += [1 << 30, 1 << 31, self.rng.choice(self.live), 0xFFFFFFF0]
        if bits == 64:
            choices += [1 << 40, 1 << 44, 1 << 62, 1 << 63]
            fifos = [t.token for t in self.targets.values() if t.kind == "fifo"]
            segments = [t.segment_id for t in self.targets.values() if t.kind == "segment"]
            choices += fifos[:4] + segments[:4]
        return rng.choice(choices) & top

    # ---- writing
    def _write_fields(self, target: Target, base: int, fields: tuple[tuple[int, int], ...], n: int) -> bool:
        """Rewrite ``n`` of ``fields`` (offset, width) at ``base`` in ``target``'s file."""
        writes = []
        for _ in range(n):
            at, width = self.rng.choice(fields)
            writes.append((base + at, width))
        return self._apply(target, writes, lambda old, width: self._value(width, int.from_bytes(old, "little"))
                           .to_bytes(width, "little"))

    def _write_bytes(self, target: Target, start: int, length: int) -> bool:
        """Random bytes over ``length`` bytes at ``start`` (a frame's payload, a whole slot)."""
        return self._apply(target, [(start, length)], lambda old, width: self.rng.randbytes(width))

    def _copy(self, target: Target, source: int, start: int, length: int) -> bool:
        """The ``length`` bytes at ``source`` of ``target`` written again at ``start``."""
        try:
            fd = os.open(target.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            data = os.pread(fd, length, source)
        finally:
            os.close(fd)
        return len(data) == length and self._apply(target, [(start, length)], lambda old, width: data)

    def _apply(self, target: Target, writes: list[tuple[int, int]],
               new: Callable[[bytes, int], bytes]) -> bool:
        try:
            fd = os.open(target.path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            size = os.fstat(fd).st_size
            undo = []
            for at, width in writes:
                if at < 0 or width <= 0 or at + width > size:
                    continue  # never write past the end: that would grow the file
                old = os.pread(fd, width, at)
                os.pwrite(fd, new(old, width), at)
                undo.append((at, old))
            if not undo:
                return False
            if self.rng.random() < 0.6:  # transient: another peer, or the owner, writes it back
                self._dwell()
                for at, old in reversed(undo):
                    os.pwrite(fd, old, at)
            return True
        finally:
            os.close(fd)

    def _dwell(self) -> None:
        how = self.rng.random()
        if how < 0.3:
            return
        time.sleep(0.0 if how < 0.6 else self.rng.uniform(0.0005, 0.003))

    # ---- the attacks: each True if it was applied
    def attack_header(self) -> bool:
        t = self._pick(lambda t: t.kind == "segment")
        return t is not None and self._write_fields(t, 0, _SEG_FIELDS, self.rng.randint(1, 3))

    def attack_directory(self) -> bool:
        t = self._pick(lambda t: t.kind == "segment")
        if t is None:
            return False
        index = self.rng.randrange(L.DIR_CAPACITY if self.rng.random() < 0.3 else 4)  # live entries come first
        if self.rng.random() < 0.8:
            return self._write_fields(t, L.entry_offset(index), _ENTRY_FIELDS, self.rng.randint(1, 3))
        # a whole entry that looks live: a live process (its start time right) holding the segment,
        # or watching a range with a FIFO it names (any FIFO, a bystander's too): senders route there
        pid = self.rng.choice(self.live)
        fifos = [f.token for f in self.targets.values() if f.kind == "fifo"] or [self._value(8, 0)]
        kind = self.rng.choice((L.KIND_HOLDER, L.KIND_RECEIVER))
        entry = L.DIR_ENTRY.pack(L.ENTRY_LIVE, self.rng.getrandbits(32), pid, kind, namespace.start_time(pid),
                                 self.rng.choice(fifos), self._value(8, 0) if self.rng.random() < 0.3 else 0,
                                 self._value(8, t.size))
        return self._apply(t, [(L.entry_offset(index), len(entry))], lambda old, width: entry)

    def _slotted(self, t: Target, first: int, fields: tuple[tuple[int, int], ...]) -> bool:
        """A frame that ends at a slot's end: its trailer's fields, its payload, the whole slot."""
        unit = t.unit
        if unit <= TRAILER_SIZE or t.size <= first:
            return False
        slots = (t.size - first) // unit
        if slots < 1:
            return False
        end = L.HEADER_SIZE + first + (self.rng.randrange(min(slots, 64)) + 1) * unit
        how = self.rng.random()
        if how < 0.55:
            return self._write_fields(t, end - TRAILER_SIZE, fields, self.rng.randint(1, 2))
        if how < 0.65:  # replay: another slot's frame (a valid one, in the wrong place)
            other = L.HEADER_SIZE + first + self.rng.randrange(min(slots, 64)) * unit
            return self._copy(t, other, end - unit, unit)
        if how < 0.85:
            length = self.rng.randint(1, min(64, unit - TRAILER_SIZE))
            return self._write_bytes(t, end - TRAILER_SIZE - self.rng.randint(length, unit - TRAILER_SIZE), length)
        return self._write_bytes(t, end - unit, unit)

    def attack_slots(self) -> bool:
        t = self._pick(lambda t: t.role in ("request", "reply", "well_known"))
        return t is not None and self._slotted(t, 0, _TRAILER_FIELDS)

    def attack_frames(self) -> bool:
        """Frames with a valid checksum (a CRC is no authenticator) that must not be taken for what
        they claim: RPC frames of other connections, or of this one with call ids no call reaches
        (2**40 and up), of any kind and fragment numbers; CONNECTs naming other clients' channels;
        stream fragments of other connections or of sequence numbers far ahead (2**20 windows).

        A forged frame of the call in flight, or of the fragment a reader expects, would be taken:
        who can write a channel can forge it. The suite does not, so that every result can be
        checked; nor does it derive a forged number from one it read here minus something: that
        number may be one an earlier round wrote (the current one plus one, say)."""
        t = self._pick(lambda t: t.role in ("request", "reply", "well_known", "stream"))
        if t is None or t.unit <= TRAILER_SIZE:
            return False
        first = -(-CONTROL_SIZE // t.unit) * t.unit if t.role == "stream" else 0
        slots = (t.size - first) // t.unit
        if slots < 1:
            return False
        end = L.HEADER_SIZE + first + (self.rng.randrange(min(slots, 64)) + 1) * t.unit
        try:
            fd = os.open(t.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            trailer = os.pread(fd, TRAILER_SIZE, end - TRAILER_SIZE)
        finally:
            os.close(fd)
        if len(trailer) < TRAILER_SIZE:
            return False
        conn, number = struct.unpack_from("<QQ", trailer)
        rng = self.rng
        if rng.random() < 0.3:
            conn = rng.getrandbits(64)  # another connection's
        room = t.unit - TRAILER_SIZE
        if t.role == "stream":  # far ahead: where the reader is (or any number read here) plus 2**20 windows
            seq = (number + slots * ((1 << 20) + rng.randrange(1 << 20))) & U64
            payload = rng.randbytes(rng.randrange(min(room, 4096) + 1))
            count = rng.choice((1, 1, 2, 3))
            frame = wire.encode(wire.Kind.DATA, conn, seq, payload, frag_index=rng.randrange(count),
                                frag_count=count, ack=rng.choice((len(payload), 1 << 40, 0)), credit=rng.randrange(3))
        elif t.role == "well_known":
            named = [os.path.basename(c.path)[4:] for c in self.targets.values() if c.role in ("request", "reply")]
            hello = {"req": rng.choice(named) if named else "x", "rep": rng.choice(named) if named else "y",
                     "conn": rng.getrandbits(63) | 1, "pid": rng.choice(self.live), "start": 0}
            if rng.random() < 0.3:
                hello = {"req": "r" * 300, "rep": None, "pid": -1, "conn": [1]}
            frame = wire.encode(wire.Kind.CALL, 0, rng.getrandbits(64), _packb(hello))
        else:  # a call no call of this connection reaches
            call = (1 << 40) + rng.getrandbits(40)
            count = rng.choice((1, 1, 2, 7, 0xFFFF))
            kind = rng.choice(list(wire.Kind))
            payload = rng.choice((rng.randbytes(rng.randrange(min(room, 300) + 1)), _packb([0, rng.getrandbits(60)]),
                                  _packb([1, "E", "m", "t"]), _packb(["add", [1, 2], {}])))[:room]
            frame = wire.encode(kind, conn, call, payload, frag_index=rng.randrange(count), frag_count=count,
                                ack=rng.choice((0, call, call - 5)), credit=rng.getrandbits(32))
        if len(frame) > t.unit:
            return False
        return self._apply(t, [(end - len(frame), len(frame))], lambda old, width: frame)

    def attack_control(self) -> bool:
        t = self._pick(lambda t: t.role in ("stream", "raw"))
        if t is None:
            return False
        at = L.HEADER_SIZE + (control_offset(t.unit) if t.unit else 0)  # the control block ends its unit
        return self._write_fields(t, at, _CONTROL_FIELDS, self.rng.randint(1, 2))

    def attack_stream_data(self) -> bool:
        t = self._pick(lambda t: t.role == "stream")
        first = -(-CONTROL_SIZE // t.unit) * t.unit if t is not None and t.unit else 0
        return t is not None and self._slotted(t, first, _TRAILER_FIELDS)

    def attack_credit(self) -> bool:
        t = self._pick(lambda t: t.role == "credit")
        if t is None:
            return False
        if self.rng.random() < 0.7:
            return self._write_fields(t, L.HEADER_SIZE, _CREDIT_FIELDS, self.rng.randint(1, 2))
        return self._write_bytes(t, L.HEADER_SIZE + CREDIT_FIRST + self.rng.randrange(CREDIT_SIZE - CREDIT_FIRST), 8)

    def attack_raw_units(self) -> bool:
        t = self._pick(lambda t: t.role == "raw")
        if t is None or not t.unit:
            return False
        first = -(-CONTROL_SIZE // t.unit) * t.unit
        units = (t.size - first) // t.unit
        if units < 1:
            return False
        end = L.HEADER_SIZE + first + (self.rng.randrange(units) + 1) * t.unit
        if self.rng.random() < 0.7:
            return self._write_fields(t, end, _RAW_UNIT_FIELDS, self.rng.randint(1, 3))
        return self._write_bytes(t, end - t.unit + self.rng.randrange(t.unit - 32), self.rng.randint(1, 32))

    def attack_fifo(self) -> bool:
        t = self._pick(lambda t: t.kind == "fifo")
        if t is None:
            return False
        if self.rng.random() < 0.5:
            return self._write_fields(t, 0, _FIFO_FIELDS, self.rng.randint(1, 2))
        cell = L.FIFO_CELLS + self.rng.randrange(128) * L.FIFO_CELL_SIZE
        return self._write_fields(t, cell, ((0, 8), (8, 8), (16, 8)), self.rng.randint(1, 2))

    def attack_signal(self) -> bool:
        """Signal random addresses of another process's segment, as any of its openers can."""
        t = self._pick(lambda t: t.kind == "segment")
        if t is None:
            return False
        opened = self.segments.get(t.ino)
        if opened is None:
            try:
                seg = ombm.open_segment(t.path.rsplit("/seg-", 1)[1])
            except HOSTILE_OK as exc:
                self.counts[f"open {type(exc).__name__}"] += 1
                return False
            try:
                opened = self.segments[t.ino] = (seg, seg.bind(writable=False))
            except HOSTILE_OK as exc:
                self.counts[f"bind {type(exc).__name__}"] += 1
                self._release(seg)
                return False
        region = opened[1]
        for _ in range(self.rng.randint(1, 4)):
            offset = self.rng.randrange(region.size) if self.rng.random() < 0.7 else region.size - 1
            ombm.signal(region.address + offset)
        return True

    def attack_forge(self) -> bool:
        """Push forged entries (a segment's id, any offset) into another process's signal FIFO."""
        t = self._pick(lambda t: t.kind == "fifo")
        if t is None:
            return False
        if t.kernel:
            return self._forge_datagrams(t)
        ref = self.fifo_refs.get(t.ino)
        if ref is None:
            try:
                ref = self.fifo_refs[t.ino] = FifoRef(t.token)
            except (OSError, ValueError):  # gone, or its header is not one (SegmentFormatError)
                return False
        segments = [s for s in self.targets.values() if s.kind == "segment"] or [t]
        for _ in range(self.rng.randint(1, 4)):
            seg = self.rng.choice(segments)
            offset = self._value(8, self.rng.randrange(max(seg.size, 1)))
            _native.fanout((ref.fifo_map,), seg.segment_id if self.rng.random() < 0.9 else self._value(8, 0), offset)
        return True

    def _forge_datagrams(self, t: Target) -> bool:
        """A receiver on the software-only path takes its signals from its socket: send it
        datagrams of any size, some of them well-formed (a segment's id, any offset)."""
        segments = [s for s in self.targets.values() if s.kind == "segment"] or [t]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            for _ in range(self.rng.randint(1, 4)):
                seg = self.rng.choice(segments)
                if self.rng.random() < 0.7:
                    data = struct.pack("<QQ", seg.segment_id, self._value(8, self.rng.randrange(max(seg.size, 1))))
                else:
                    data = self.rng.randbytes(self.rng.choice((0, 1, 15, 17, 64, 200)))
                sock.sendto(data, os.path.join(self.folder, f"sock-{t.token:016x}"))
        except OSError:  # no such socket (yet), or its queue is full
            return False
        finally:
            sock.close()
        return True

    def attack_junk(self) -> bool:
        """Put something that is not a regular file under an object's name (ombm gc and ls must
        neither block on it nor fail)."""
        name = self.rng.choice(("fifo-", "seg-", "sock-")) + f"{self.rng.getrandbits(64):016x}"
        if self.rng.random() < 0.3:  # where a party will create or open its next channel
            prefix = self.prefixes[self.rng.choice(("stream", "raw"))]
            latest = max((int(t.path.rsplit("-", 1)[1].split(".")[0]) for t in self.targets.values()
                          if t.kind == "segment" and os.path.basename(t.path).startswith(f"seg-{prefix}-")), default=0)
            name = f"seg-{prefix}-{latest + self.rng.randint(1, 2)}" + self.rng.choice(("", CREDIT_SUFFIX))
        path = os.path.join(self.folder, name)
        try:
            how = self.rng.random()
            if how < 0.5:
                os.mkfifo(path, 0o600)
            elif how < 0.8:
                os.mkdir(path, 0o700)
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    sock.bind(path)
                finally:
                    sock.close()
        except OSError:
            return False
        self.junk.append(path)
        if len(self.junk) > 8:
            self._remove(self.junk.pop(0))
        return True

    def attack_admin(self) -> bool:
        """``ombm ls`` and ``ombm gc`` over everything (theirs to read, never to trust)."""
        admin.list_segments()
        if self.rng.random() < 0.3:
            admin.gc()
        return True

    def attack_record(self) -> bool:
        """Replace the record that names a private folder (every process reads it when it starts)
        by junk, a named pipe or a folder."""
        os.makedirs(os.path.dirname(self.record), mode=0o700, exist_ok=True)
        self._remove(self.record)
        how = self.rng.random()
        if how < 0.15:
            os.mkfifo(self.record, 0o600)
        elif how < 0.25:
            os.mkdir(self.record, 0o700)
        else:
            junk = self.rng.choice((self.rng.randbytes(self.rng.randrange(300)), b"ombm-0-../../etc\n", b"\0" * 64,
                                    f"ombm-{os.getuid()}-nonexistent\n".encode(), b"ombm-" + b"a" * 400))
            fd = os.open(self.record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, junk)
            finally:
                os.close(fd)
        return True

    def attack_own(self) -> bool:
        """Its own channel: a segment it writes and watches, its own FIFO: scribble them while
        using them (a process that writes its own objects must not crash itself either)."""
        if self.own is None or self.rng.random() < 0.05:
            self._drop_own()
            self.own_n += 1
            seg = ombm.create_segment(4096, name=f"{self.prefixes['own']}-{self.own_n}")
            region = seg.bind()
            receiver = ombm.Receiver()
            receiver.add_handler(region.address, region.size, self._on_own)
            self.own = (seg, region, receiver)
        seg, region, receiver = self.own
        paths = (seg.path, receiver.fifo.path)
        path = self.rng.choice(paths)
        target = Target(path, 0, "own", "own", os.getpid(), size=4096, unit=64)
        if path == seg.path:
            where = self.rng.random()
            if where < 0.3:
                self._write_fields(target, 0, _SEG_FIELDS, 1)
            elif where < 0.7:
                self._write_fields(target, L.entry_offset(self.rng.randrange(4)), _ENTRY_FIELDS, 2)
            else:
                self._write_bytes(target, L.HEADER_SIZE + self.rng.randrange(4096 - 8), 8)
        else:
            cell = L.FIFO_CELLS + self.rng.randrange(128) * L.FIFO_CELL_SIZE
            self._write_fields(target, self.rng.choice((0, cell)), _FIFO_FIELDS if self.rng.random() < 0.5
                               else ((0, 8), (8, 8), (16, 8)), 1)
        region.write(self.rng.randrange(64) * 64, b"x" * 64)
        receiver.dispatch_pending()
        receiver.wait(0.0005)
        return True

    def _on_own(self, address: int) -> None:
        self.own_signals += 1

    def attack_truncate(self) -> bool:
        """Cut an object short under the processes that map it (their next access: a SIGBUS, which
        the guard turns into a broken mapping)."""
        t = self._pick(lambda t: True)
        if t is None:
            return False
        try:
            size = os.stat(t.path).st_size
            os.truncate(t.path, self.rng.choice((0, L.HEADER_SIZE if t.kind == "segment" else 64, size // 2)))
        except OSError:
            return False
        return True

    # ---- running
    def _round(self) -> None:
        self.round += 1
        kind = self.rng.choice(self.attacks)
        try:
            if getattr(self, f"attack_{kind}")():
                self.applied[kind] += 1
            else:
                self.counts[f"{kind} found nothing"] += 1
        except HOSTILE_OK as exc:
            self.counts[f"{kind} {type(exc).__name__}"] += 1
        except Exception:
            self.unexpected(f"round {self.round} ({kind}) raised an undocumented exception")

    def command(self, message: Any) -> None:
        if not (isinstance(message, tuple) and message[0] == "rounds"):
            super().command(message)
            return
        self.scan()
        for i in range(message[1]):
            if self.stopping:
                break
            if i % 25 == 24:
                self.scan()
            self._round()
        self.conn.send(("done", {"rounds": self.round, "applied": dict(self.applied)}))

    def report(self) -> dict[str, Any]:
        out = super().report()
        out["rounds"], out["applied"] = self.round, dict(self.applied)
        return out

    def run(self) -> None:
        self.scan()
        self.conn.send(("ready", {"pid": os.getpid()}))
        while not self.stopping:
            self.pause(0.05)

    def _remove(self, path: str) -> None:
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                self.unexpected(f"removing its junk {path}")

    def _release(self, seg: ombm.Segment) -> None:
        try:
            seg.release()
        except Exception:
            self.unexpected("releasing a segment it opened raised")

    def _drop_own(self) -> None:
        if self.own is not None:
            seg, _region, receiver = self.own
            self.own = None
            receiver.close()
            self._release(seg)

    def close(self) -> None:
        for path in self.junk:
            self._remove(path)
        for seg, _region in self.segments.values():
            self._release(seg)
        self.segments.clear()
        self.fifo_refs.clear()
        self._drop_own()
        self.counts["own signals"] = self.own_signals
