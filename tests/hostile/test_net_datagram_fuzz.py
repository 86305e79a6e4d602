"""Every field of a bridge datagram is hostile input: random and mutated datagrams (tests/net_fuzz.py)
through ``datagram.decode`` (which may raise DatagramError and nothing else) and through a bridge's
receive path (which raises nothing: it drops and counts).

The suite runs ``OMBM_FUZZ_DATAGRAMS`` datagrams per test (default 10,000); the full run is a million:

    OMBM_FUZZ_DATAGRAMS=1000000 PYTHONPATH=src python -m pytest -q -s --timeout 0 tests/hostile/test_net_datagram_fuzz.py
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

import ombm
from ombm import DatagramError
from ombm.net import Bridge
from ombm.transport import datagram as dg

from net_fuzz import Fuzzer

COUNT = int(os.environ.get("OMBM_FUZZ_DATAGRAMS", "10000"))
SEED = int(os.environ.get("OMBM_FUZZ_SEED", "12"))
KEY = bytes(range(7, 39))


@pytest.mark.parametrize("key", [None, KEY], ids=["crc", "mac"])
def test_decode_raises_only_datagram_error(key):
    fuzzer = Fuzzer(SEED, key)
    outcomes: dict[str, int] = {}
    for i in range(COUNT):
        data = fuzzer.datagram()
        try:
            got = dg.decode(data, key)
            outcome = f"ok {got.kind.name}"
        except DatagramError as exc:
            outcome = exc.reason
        except Exception as exc:  # the bug this test exists for
            raise AssertionError(f"datagram {i} (seed {SEED}) raised {exc!r}: {data.hex()}") from exc
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(f"\ndecode, {'MAC' if key else 'CRC32C'}: {COUNT} datagrams: {dict(sorted(outcomes.items()))}")
    assert sum(v for k, v in outcomes.items() if k.startswith("ok")) > COUNT // 10  # the fuzz reaches the parser
    assert outcomes.get("malformed", 0) > COUNT // 10


@pytest.fixture
def pair():
    """Bridges A (exporting segment ``fz-…``) and B (its replica), both stopped after the import: the
    test then calls their receive paths itself, as their serving threads would."""
    name = f"fz-{uuid.uuid4().hex[:10]}"
    made = []
    seg = ombm.create_segment(64 * 1024, name=name, unit=4096)
    region = seg.bind()
    for key in (KEY, None):
        a = Bridge("127.0.0.1:0", exports=[name], key=key, control=False)
        b = Bridge("127.0.0.1:0", key=key, control=False)
        made += [a, b]
        if key is None:
            a.add_peer(f"127.0.0.1:{b.address[1]}")
            b.add_peer(f"127.0.0.1:{a.address[1]}")
        a.start(), b.start()
        reply = b.request({"op": "import", "name": name, "host": "127.0.0.1", "port": a.address[1]})
        assert reply["ok"], reply
        a.stop(), b.stop()
    yield name, made
    for bridge in made:
        bridge.close()
    region.unbind()
    seg.release()


def _relink(a: Bridge, b: Bridge, name: str, key: int) -> None:
    """Put back what a fuzzed BYE took away (the exported segment and its link, the replica), under
    the segment key the fuzzer addresses."""
    exported = a._exported.get(name)
    if exported is None:
        a._serve_import({"nonce": 1, "name": name}, b.address)
        exported = a._exported[name]
        del a._replicas[exported.key]
        if key in a._replicas:  # a fuzzed OFFER made a replica under that key meanwhile
            a._drop_replica(a._replicas[key])
        if exported.engine is not None:  # the native path knows it by its key: by the new one now
            exported.engine.remove(exported.key)
        exported.key = key
        exported._sync()
        a._replicas[key] = exported
    elif b.address not in exported.links:
        exported.link(b.address)
    if key not in b._replicas:
        b._make_replica(name, a.address, {"key": key, "size": 64 * 1024, "unit": 4096, "mode": 1, "sow": True})


def test_a_bridge_takes_any_datagram(pair):
    name, (a, b, a2, b2) = pair
    started = time.monotonic()
    for bridge_pair, key in (((a, b), KEY), ((a2, b2), None)):
        exporter, importer = bridge_pair
        replica = next(iter(importer._replicas.values()))
        segments = [(replica.key, 64 * 1024, 4096)]
        fuzzer = Fuzzer(SEED, key, segments, names=[name, "fz"], clock_us=lambda: time.time_ns() // 1000)
        for i in range(COUNT):
            target, source = (importer, exporter) if i % 2 else (exporter, importer)
            target.receive_datagram(fuzzer.datagram(), source.address)
            if i % 16 == 0:
                _relink(exporter, importer, name, replica.key)
        for bridge in bridge_pair:
            stats = bridge.stats
            assert stats["internal_errors"] == 0, stats
        taken = {k: v for k, v in (exporter.stats | {"updates_in (importer)": importer.stats["updates_in"]}).items()
                 if v and k not in ("bytes_in", "bytes_out")}
        print(f"\nbridge, {'MAC' if key else 'CRC32C'}: {COUNT} datagrams: {taken}")
        assert importer.stats["updates_in"] > 0 and exporter.stats["imports_served"] > 1
    print(f"({time.monotonic() - started:.1f} s)")


@pytest.mark.parametrize("key", [None, KEY], ids=["crc", "mac"])
def test_a_native_bridge_takes_any_datagram(pair, key):
    """The same fuzz over UDP into a bridge serving on its native data path (``_native.BridgeEngine``):
    whatever it takes itself must be what ``decode`` accepts (an UPDATE: single-part entries, and parts
    of longer updates for its assembler), and nothing may raise, crash or stop it."""
    name, (a, b, a2, b2) = pair
    exporter, importer = (a, b) if key else (a2, b2)
    engine = importer._engine
    assert engine is not None
    replica = next(iter(importer._replicas.values()))
    fuzzer = Fuzzer(SEED + 1, key, [(replica.key, 64 * 1024, 4096)], names=[name, "fz"],
                    clock_us=lambda: time.time_ns() // 1000)
    sent = took = fragments = 0
    before = importer.stats["datagrams_in"]
    for chunk in range(0, COUNT, 512):
        importer.stop()
        _relink(exporter, importer, name, replica.key)  # what a fuzzed BYE or OFFER undid
        batch = [fuzzer.datagram() for _ in range(min(512, COUNT - chunk))]
        for data in batch:
            if engine.takes(data, exporter.address):
                took += 1
                got = dg.decode(data, key)  # raises if the native path would take what Python refuses
                assert got.kind is dg.Kind.UPDATE  # single-part updates and fragments alike
                fragments += any(entry.parts > 1 for entry in got.entries)  # the native assembler's
        importer.start()
        for i, data in enumerate(batch):
            exporter._sock.sendto(data, importer.address)  # from the exporter's address: its link
            sent += 1
            if i % 64 == 63:  # paced: the socket's buffer never overflows
                deadline = time.monotonic() + 10
                while importer.stats["datagrams_in"] - before < sent and time.monotonic() < deadline:
                    time.sleep(0.001)
    deadline = time.monotonic() + 10
    while importer.stats["datagrams_in"] - before < sent and time.monotonic() < deadline:
        time.sleep(0.005)
    stats = importer.stats
    importer.stop()
    # every fuzzed datagram was taken in (at least: the exporter, a live bridge, may send one of its own,
    # e.g. an answer to a fuzzed control datagram the importer relayed), and none raised inside
    assert stats["datagrams_in"] - before >= sent and stats["internal_errors"] == 0, stats
    print(f"\nnative bridge, {'MAC' if key else 'CRC32C'}: {sent} datagrams, {took} of them for the native path: "
          f"{ {k: v for k, v in stats.items() if v and k not in ('bytes_in', 'bytes_out')} }")
    assert took > 0 and stats["native_in"] > 0 and fragments > 0
