"""Random and mutated bridge datagrams for the fuzz and property tests (seeded, reproducible).

A :class:`Fuzzer` starts from a corpus of valid datagrams of every kind (updates of the segments it is
told about, control messages), mutates them (bit flips, interesting values in fields, truncation,
extension, splices, deletions, duplicated slices, random bytes) and, most of the time, seals the
mutated bytes again with a valid MAC or CRC and a fresh sequence number, so that they get past the
integrity and replay checks and reach the parsing and the bridge's handling behind them.
"""

from __future__ import annotations

import random
import struct
from typing import Callable

from ombm._native import checksum
from ombm.transport import datagram as dg
from ombm.transport.datagram import Kind, Sealer, pack_entry

INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 2**63 - 1, 2**63, 2**64 - 1, 64, 4096, 65535, 131072]


class Fuzzer:
    def __init__(self, seed: int, key: bytes | None, segments: list[tuple[int, int, int]] = (),
                 names: list[str] = ("fz",), clock_us: Callable[[], int] = lambda: 1) -> None:
        """``segments``: (key, size, unit) of replicated segments the updates should address; ``clock_us``:
        what the senders' sequence numbers keep up with (a bridge with a key wants them near its clock)."""
        self.rng = random.Random(seed)
        self.key = key
        self.trailer = dg.MAC_SIZE if key else dg.CRC_SIZE
        self.segments = list(segments) or [(self.rng.getrandbits(63), 8192, 64)]
        self.names = list(names)
        self.senders = [Sealer(self.rng.getrandbits(64), key) for _ in range(4)]
        self.clock_us = clock_us
        self.now_us = clock_us()
        self.corpus = [self.valid() for _ in range(64)]

    # -- valid datagrams
    def valid(self) -> bytes:
        rng = self.rng
        sealer = rng.choice(self.senders)
        self.now_us = max(self.now_us + 1, self.clock_us())
        kind = rng.choice(list(Kind) + [Kind.UPDATE] * 6)
        if kind is Kind.UPDATE:
            entries = [self._entry() for _ in range(rng.randint(1, 4))]
            return sealer.seal(kind, b"".join(entries), len(entries), self.now_us)
        nonce = rng.getrandbits(rng.choice((8, 63, 64)))
        seg_key = rng.choice(self.segments)[0]
        body = {
            Kind.LIST: {"nonce": nonce},
            Kind.EXPORTS: {"nonce": nonce, "names": rng.sample(self.names, k=len(self.names))},
            Kind.IMPORT: {"nonce": nonce, "name": rng.choice(self.names + ["x", "a" * 200, "../etc"])},
            Kind.IMPORT_REPLY: rng.choice([
                {"nonce": nonce, "name": rng.choice(self.names), "key": seg_key, "size": rng.choice((64, 8192, 1 << 44)),
                 "unit": rng.choice((64, 4096)), "mode": rng.choice((1, 2)), "sow": rng.random() < 0.8},
                {"nonce": nonce, "name": rng.choice(self.names), "error": "no", "why": "not_found"}]),
            Kind.OFFER: {"nonce": nonce, "name": rng.choice(self.names + ["y.z"]), "key": seg_key,
                         "size": rng.choice((64, 8192, 1 << 20)), "unit": rng.choice((64, 4096)), "mode": 1,
                         "sow": True},
            Kind.OFFER_REPLY: rng.choice([{"nonce": nonce, "name": rng.choice(self.names), "local": "x.at.1"},
                                          {"nonce": nonce, "name": rng.choice(self.names), "error": "no"}]),
            Kind.RESYNC: {"key": seg_key, "units": [rng.randrange(200) for _ in range(rng.randrange(5))]},
            Kind.BYE: {"keys": rng.choice(([], [seg_key], [rng.getrandbits(64)]))},
            Kind.LOCATE: {"nonce": nonce, "name": rng.choice(self.names + ["x", "../etc"])},
            Kind.LOCATED: {"nonce": nonce, "name": rng.choice(self.names)},
            Kind.PING: {"keys": rng.choice(([], [seg_key], [seg_key, rng.getrandbits(64)]))},
            Kind.PONG: {"gone": rng.choice(([], [seg_key], [rng.getrandbits(64)]))},
            Kind.PROBE: {"nonce": nonce, "pad": bytes(rng.choice((0, 1, 300, 1400)))},
            Kind.PROBED: {"nonce": nonce},
        }[kind]
        return sealer.control(kind, body, self.now_us)

    def _entry(self) -> bytes:
        rng = self.rng
        seg_key, size, unit = rng.choice(self.segments)
        u = rng.randrange(-(-size // unit))
        lo, hi = u * unit, min(u * unit + unit, size)
        start = hi - rng.randint(1, min(hi - lo, 1200)) if rng.random() < 0.8 else rng.randrange(lo, hi)
        parts = rng.choice((1, 1, 1, 2, 3))
        part = rng.randrange(parts)
        full = rng.random() < 0.5
        base = 0 if full else rng.choice((1, rng.getrandbits(32) or 1))
        tag = rng.getrandbits(32) or 1
        return pack_entry(seg_key, start, base, tag, part, parts, full, rng.randbytes(hi - start)[:1200])

    # -- mutations
    def datagram(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.1:
            return rng.randbytes(rng.choice((0, 1, 20, 27, 28, 44, rng.randrange(2000))))
        if roll < 0.25:
            return self.valid()
        data = rng.choice(self.corpus) if rng.random() < 0.7 else self.valid()
        body = bytearray(data[:-self.trailer])
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            self._mutate(body)
        if rng.random() < 0.75:
            return self.reseal(body)
        return bytes(body) + data[-self.trailer:]

    def _mutate(self, body: bytearray) -> None:
        rng = self.rng
        op = rng.randrange(9)
        n = len(body)
        if op == 0 and n:
            body[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            body[rng.randrange(n)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif op == 2 and n >= 8:
            fmt = rng.choice("BHIQ")
            size = struct.calcsize(fmt)
            at = rng.choice([3, 6, 24, 32, 40, 48, 50, 52, 54, rng.randrange(n)])
            if at + size <= n:
                struct.pack_into("<" + fmt, body, at, rng.choice(INTERESTING) & ((1 << 8 * size) - 1))
        elif op == 3:
            del body[rng.randrange(n + 1):]
        elif op == 4:
            body += rng.randbytes(rng.choice((1, 4, 32, 33, rng.randrange(200))))
        elif op == 5 and n:
            a = rng.randrange(n)
            del body[a:a + rng.randrange(1, 40)]
        elif op == 6 and n:
            a = rng.randrange(n)
            body[a:a] = body[a:a + rng.randrange(1, 64)]
        elif op == 7:
            other = rng.choice(self.corpus)[:-self.trailer]
            cut = rng.randrange(min(n, len(other)) + 1)
            body[cut:] = other[cut:]
        elif op == 8 and n >= 8:
            struct.pack_into("<H", body, 6, rng.choice((0, 1, 2, 5, 255, 0xFFFF)))

    def reseal(self, body: bytearray) -> bytes:
        """``body`` with a fresh sequence number and a valid trailer (a MAC with the key)."""
        if len(body) >= dg.HEADER_SIZE and self.rng.random() < 0.9:
            self.now_us = max(self.now_us + 1, self.clock_us())
            struct.pack_into("<Q", body, 16, self.now_us)
        data = bytes(body)
        if self.key:
            return data + dg._mac(self.key, data)
        return data + struct.pack("<I", checksum(data))
