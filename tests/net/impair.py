"""The impairment relay: a UDP forwarder between two endpoints that drops, duplicates, reorders,
delays and corrupts datagrams, seeded, and counts what it did (issue 12).

The kernel here has no ``netem``; loss alone comes from nftables (``Host.drop_percent``), and
everything else from this relay, run as its own process inside a host::

    endpoint A  --->  [a socket]  relay  [b socket]  --->  endpoint B
                <---                                  <---

A datagram that reaches the *a* socket is impaired by the ``a_to_b`` settings and sent from the
*b* socket to B; one that reaches the *b* socket is impaired by ``b_to_a`` and sent from the *a*
socket to A. B is given; A is given too, or learnt: the source of the latest datagram on the
*a* socket (so a client with an ephemeral port works). Both sockets bind ``0.0.0.0`` (port 0:
any free one).

Each direction is a :class:`Direction`, pure (no socket, no clock: ``now`` is an argument, one
seeded ``random.Random``), in this order per datagram: drop; corrupt (flip 1-3 bits, truncate
to a shorter length, or extend by 1-16 bytes: the result always differs); duplicate (two
copies); then per copy: hold it back (reorder) until ``reorder_after`` later datagrams have
been sent in that direction (or ``hold_max_us`` passed, or a flush), or delay it by
``delay_us`` plus up to ``jitter_us``. A released datagram counts as *reordered* only if a
later one went out before it. Counts: ``received``, ``dropped``, ``corrupted`` (and by kind),
``duplicated``, ``held``, ``reordered``, ``delayed``, ``sent``, ``send_errors``; after a flush,
``sent + send_errors == received - dropped + duplicated``.

The process (``python impair.py --b HOST:PORT [--a HOST:PORT] [--a-to-b SPEC] [--b-to-a SPEC]
[--seed N]``, SPEC like ``drop=0.1,duplicate=0.05,delay_us=200``) prints one JSON line
``{"a": port, "b": port}`` when ready, then obeys lines on stdin: ``counts`` (prints the counts
as a JSON line), ``flush`` (sends every held and delayed datagram now; prints ``{"flushed": n}``),
``stop`` or end of input (flush, print the counts, exit). :class:`ImpairmentRelay` drives it
from a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import os
import random
import select
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_BUFFER_BYTES = 16 << 20  # socket buffers: a burst from a test must not be lost before the relay reads it
_MAX_DATAGRAM = 65535
_REPLY_TIMEOUT_S = 30.0  # a reply on the control pipe (failure only: never a bound a test asserts)


@dataclass(frozen=True)
class Impairment:
    """What one direction does to datagrams: probabilities 0..1, times in µs."""

    drop: float = 0.0
    corrupt: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_after: int = 1  # a held datagram goes out after this many later ones
    hold_max_us: float = 50_000.0  # ... or after this long, if traffic stops
    delay_us: float = 0.0
    jitter_us: float = 0.0

    def __post_init__(self) -> None:
        for name in ("drop", "corrupt", "duplicate", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, not {getattr(self, name)}")
        if self.reorder_after < 1 or self.hold_max_us < 0 or self.delay_us < 0 or self.jitter_us < 0:
            raise ValueError(f"bad impairment {self}")

    def spec(self) -> str:
        """The command-line form: ``name=value`` for every field that is not the default."""
        default = Impairment()
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                        if getattr(self, f.name) != getattr(default, f.name))

    @classmethod
    def parse(cls, spec: str) -> Impairment:
        types = {f.name: (int if f.name == "reorder_after" else float) for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for item in filter(None, spec.split(",")):
            name, _, value = item.partition("=")
            if name not in types:
                raise ValueError(f"unknown impairment {name!r}; known: {', '.join(types)}")
            values[name] = types[name](value)
        return cls(**values)


@dataclass
class _Held:
    datagram: bytes
    index: int  # its place in the order datagrams were received
    countdown: int  # later datagrams (received after it) still to go out before it
    deadline: float
    overtaken: bool = False  # a later datagram went out before it


@dataclass
class Direction:
    """One direction of the relay, pure: datagrams in (with ``now``), datagrams to send out."""

    impairment: Impairment
    rng: random.Random
    counts: Counter[str] = field(default_factory=Counter)
    _held: list[_Held] = field(default_factory=list)
    _delayed: list[tuple[float, int, bytes]] = field(default_factory=list)  # heap of (due, index, datagram)

    def push(self, datagram: bytes, now: float) -> list[bytes]:
        """One datagram received: what to send now."""
        imp, rng, out = self.impairment, self.rng, []
        index = self.counts["received"]
        self.counts["received"] += 1
        if rng.random() < imp.drop:
            self.counts["dropped"] += 1
            return out
        if rng.random() < imp.corrupt:
            datagram = self._corrupted(datagram)
        copies = 2 if rng.random() < imp.duplicate else 1
        self.counts["duplicated"] += copies - 1
        for _ in range(copies):
            if rng.random() < imp.reorder:
                self.counts["held"] += 1
                self._held.append(_Held(datagram, index, imp.reorder_after, now + imp.hold_max_us / 1e6))
                continue
            delay_s = (imp.delay_us + imp.jitter_us * rng.random()) / 1e6
            if delay_s > 0:
                self.counts["delayed"] += 1
                heapq.heappush(self._delayed, (now + delay_s, index, datagram))
            else:
                self._send(datagram, index, out)
        return out

    def poll(self, now: float) -> list[bytes]:
        """The delayed datagrams now due and the held ones past their deadline."""
        out: list[bytes] = []
        while self._delayed and self._delayed[0][0] <= now:
            _, index, datagram = heapq.heappop(self._delayed)
            self._send(datagram, index, out)
        for held in [h for h in self._held if h.deadline <= now]:
            self._release(held, out)
        return out

    def next_deadline(self) -> float | None:
        deadlines = [h.deadline for h in self._held] + ([self._delayed[0][0]] if self._delayed else [])
        return min(deadlines, default=None)

    def flush(self) -> list[bytes]:
        """Everything still delayed (in due order) or held, to send now."""
        out: list[bytes] = []
        while self._delayed:
            _, index, datagram = heapq.heappop(self._delayed)
            self._send(datagram, index, out)
        while self._held:
            self._release(self._held[0], out)
        return out

    def _send(self, datagram: bytes, index: int, out: list[bytes]) -> None:
        out.append(datagram)
        for held in self._held:
            if held.index < index:  # a later datagram goes out first
                held.overtaken = True
                held.countdown -= 1
        for held in [h for h in self._held if h.countdown <= 0]:
            if held in self._held:  # not released already by the release of another
                self._release(held, out)

    def _release(self, held: _Held, out: list[bytes]) -> None:
        self._held.remove(held)
        self.counts["reordered"] += held.overtaken
        self._send(held.datagram, held.index, out)

    def _corrupted(self, datagram: bytes) -> bytes:
        rng = self.rng
        kinds = ["flip", "truncate", "extend"] if datagram else ["extend"]
        kind = kinds[rng.randrange(len(kinds))]
        self.counts["corrupted"] += 1
        self.counts[f"corrupted_{kind}"] += 1
        if kind == "extend":
            return datagram + rng.randbytes(rng.randint(1, 16))
        if kind == "truncate":
            return datagram[: rng.randrange(len(datagram))]
        data = bytearray(datagram)
        for bit in rng.sample(range(len(data) * 8), min(rng.randint(1, 3), len(data) * 8)):
            data[bit // 8] ^= 1 << (bit % 8)
        return bytes(data)


# --- the process ------------------------------------------------------------------------------


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # 33/32: the *BUFFORCE options
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, _BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, _BUFFER_BYTES)
    sock.bind(("0.0.0.0", 0))
    sock.setblocking(False)
    return sock


class _Relay:
    """The I/O loop: two sockets, stdin for commands, the directions' deadlines."""

    def __init__(self, b: tuple[str, int], a: tuple[str, int] | None, a_to_b: Impairment,
                 b_to_a: Impairment, seed: int) -> None:
        self.a_side, self.b_side = _socket(), _socket()
        self.a, self.b = a, b
        self.learn_a = a is None
        self.a_to_b = Direction(a_to_b, random.Random(f"{seed}:a_to_b"))
        self.b_to_a = Direction(b_to_a, random.Random(f"{seed}:b_to_a"))

    def counts(self) -> dict[str, dict[str, int]]:
        return {"a_to_b": dict(self.a_to_b.counts), "b_to_a": dict(self.b_to_a.counts)}

    def serve(self) -> None:
        _say({"a": self.a_side.getsockname()[1], "b": self.b_side.getsockname()[1]})
        commands = sys.stdin.fileno()
        pending = b""
        while True:
            deadlines = [d for d in (self.a_to_b.next_deadline(), self.b_to_a.next_deadline()) if d is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            readable, _, _ = select.select([self.a_side, self.b_side, commands], [], [], timeout)
            if self.a_side in readable:
                self._forward(self.a_side, self.a_to_b, self.b_side, learn=True)
            if self.b_side in readable:
                self._forward(self.b_side, self.b_to_a, self.a_side, learn=False)
            now = time.monotonic()
            self._send(self.b_side, self.b, self.a_to_b, self.a_to_b.poll(now))
            self._send(self.a_side, self.a, self.b_to_a, self.b_to_a.poll(now))
            if commands in readable:
                chunk = os.read(commands, 4096)
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if not self._command(line.decode().strip()):
                        return
                if not chunk and not self._command("stop"):
                    return

    def _forward(self, sock: socket.socket, direction: Direction, out: socket.socket, learn: bool) -> None:
        while True:
            try:
                datagram, source = sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                return
            if learn and self.learn_a:
                self.a = source
            target = self.b if out is self.b_side else self.a
            self._send(out, target, direction, direction.push(datagram, time.monotonic()))

    def _send(self, sock: socket.socket, target: tuple[str, int] | None, direction: Direction,
              datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            try:
                if target is None:
                    raise OSError("no endpoint A yet")
                sock.sendto(datagram, target)
                direction.counts["sent"] += 1
            except OSError:
                direction.counts["send_errors"] += 1

    def _command(self, command: str) -> bool:
        """Obey one command; False once told to stop."""
        if command == "counts":
            _say(self.counts())
        elif command in ("flush", "stop"):
            flushed = self.a_to_b.flush()
            self._send(self.b_side, self.b, self.a_to_b, flushed)
            back = self.b_to_a.flush()
            self._send(self.a_side, self.a, self.b_to_a, back)
            _say(self.counts() if command == "stop" else {"flushed": len(flushed) + len(back)})
            return command != "stop"
        elif command:
            _say({"error": f"unknown command {command!r}"})
        return True


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--b", required=True, type=_address, help="endpoint B, HOST:PORT")
    parser.add_argument("--a", type=_address, help="endpoint A, HOST:PORT (default: learnt)")
    parser.add_argument("--a-to-b", type=Impairment.parse, default=Impairment(), help="impairment A to B")
    parser.add_argument("--b-to-a", type=Impairment.parse, default=Impairment(), help="impairment B to A")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _Relay(args.b, args.a, args.a_to_b, args.b_to_a, args.seed).serve()


# --- the test's handle ------------------------------------------------------------------------


class ImpairmentRelay:
    """The relay process inside ``host``, between A (given or learnt) and ``b``.

    ``with ImpairmentRelay(host, (b.address, port), a_to_b=Impairment(drop=0.1)) as relay:``
    send to ``(host.address, relay.port_a)``; ``relay.counts()``, ``relay.flush()``,
    ``relay.stop()`` (the final counts). The host kills it at teardown whatever happens.
    """

    def __init__(self, host: Any, b: tuple[str, int], *, a: tuple[str, int] | None = None,
                 a_to_b: Impairment = Impairment(), b_to_a: Impairment = Impairment(), seed: int = 0) -> None:
        argv = [sys.executable, os.path.abspath(__file__), "--b", f"{b[0]}:{b[1]}", "--seed", str(seed)]
        if a is not None:
            argv += ["--a", f"{a[0]}:{a[1]}"]
        for flag, impairment in (("--a-to-b", a_to_b), ("--b-to-a", b_to_a)):
            if impairment.spec():
                argv += [flag, impairment.spec()]
        self.process: subprocess.Popen[str] = host.popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ports = self._reply()
        self.port_a: int = ports["a"]
        self.port_b: int = ports["b"]

    def __enter__(self) -> ImpairmentRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reply(self) -> dict[str, Any]:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], _REPLY_TIMEOUT_S)
        line = stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError(f"the impairment relay did not answer (exit status {self.process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _ask(self, command: str) -> dict[str, Any]:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()
        return self._reply()

    def counts(self) -> dict[str, Counter[str]]:
        """What each direction has done so far, ``{"a_to_b": Counter, "b_to_a": Counter}``."""
        return {k: Counter(v) for k, v in self._ask("counts").items()}

    def flush(self) -> int:
        """Send every held and delayed datagram now; how many."""
        flushed: int = self._ask("flush")["flushed"]
        return flushed

    def stop(self) -> dict[str, Counter[str]]:
        """Flush, stop the relay, and return its final counts."""
        counts = {k: Counter(v) for k, v in self._ask("stop").items()}
        self.process.wait(_REPLY_TIMEOUT_S)
        self.close()
        return counts

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


if __name__ == "__main__":
    main()
