"""Streams and raw channels across real hosts (docs/net.md, docs/channels.md): two network
namespaces, a bridge in each (with a key), the writer on host a, the reader on host b opening
``name@HOST:PORT``. Between the bridges: 5 % of the datagrams crossing the veth pair dropped by
nftables (both ways) and the impairment relay (in host a, in front of a's bridge) duplicating,
reordering and corrupting some, both ways.

* A Stream delivers every message, in order, exactly once, and ends with ``EndOfStream``.
* A RawChannel delivers frames best effort: never a wrong or torn frame, losses counted.
* A writer or a reader killed on one host is noticed by the other end (``ChannelBrokenError``).
* A bridge killed with SIGKILL leaves nothing ``ombm gc`` cannot reclaim.
* Bulk: 1 MiB messages (730 datagrams each, sent in runs with UDP GSO, taken joined with UDP GRO,
  gathered by the native assembler) arrive whole, in order, once; duplicated and reordered too.

No upper bound on time is asserted; the deadlines only bound a failure.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

import pytest

from .impair import Impairment, ImpairmentRelay
from .netns import Host, Network, need_nft
from .test_net_rpc import BRIDGE_PORT, CLI, bridge, key_file

pytestmark = pytest.mark.processes

ANSWER_S = 120.0  # a failure bound for one line from a process, never an assertion on time

# message i of the stream tests: 9 bytes to about 1 KiB, so a slot of 512 bytes takes one to three fragments
MESSAGE = "def message(i):\n    return (b'%08d:' % i) * (1 + (i * 37) % 120)\n"

STREAM_WRITER = MESSAGE + r"""
import json, sys
from ombm.channels.stream import Stream
name, n = sys.argv[1], int(sys.argv[2])
s = Stream.create(name, slot_bytes=512, slots=8)
print(json.dumps({"ready": True}), flush=True)
out = {"ok": True}
try:
    for i in range(n):
        s.send(message(i), timeout=60)
    if sys.argv[3] == "hold":                  # the stream stays open until a line comes (or this is killed)
        s.flush(timeout=60)
        print(json.dumps({"sent": n}), flush=True)
        sys.stdin.readline()
        for i in range(n, n + 100):            # more than the window: the writer must hear from its reader
            s.send(message(i), timeout=60)
    s.flush(timeout=60)
except Exception as exc:
    out = {"ok": False, "type": type(exc).__name__, "message": str(exc)}
stats = s.statistics()
s.close(flush_timeout=10)
out.update(resignals=stats.resignals, repairs=stats.repairs)
print(json.dumps(out), flush=True)
"""

STREAM_READER = MESSAGE + r"""
import json, sys, ombm
from ombm.channels.stream import Stream
r = Stream.open(sys.argv[1], timeout=30)
print(json.dumps({"ready": True}), flush=True)
got, wrong, end = 0, [], None
try:
    while True:
        msg = r.recv(timeout=60)
        if bytes(msg) != message(got):
            wrong.append(got)
        got += 1
except Exception as exc:
    end = type(exc).__name__
stats = r.statistics()
r.close()
print(json.dumps({"got": got, "wrong": wrong, "end": end, "bad_frames": stats.bad_frames}), flush=True)
"""

RAW_WRITER = r"""
import json, sys, time
from ombm.channels.raw import RawChannel
name, n = sys.argv[1], int(sys.argv[2])
w = RawChannel.create(name, unit_size=1024, units=8, checksum=True)
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()                                  # the reader is there
for i in range(1, n + 1):
    w.write(bytes([i % 251]) * (64 + i % 900))        # frame seq i: its content follows from i
    time.sleep(0.002)
time.sleep(0.5)
w.close()
print(json.dumps({"written": n}), flush=True)
sys.stdin.readline()
"""

RAW_READER = r"""
import json, sys
from ombm.channels.raw import RawChannel
r = RawChannel.open(sys.argv[1], timeout=30)
print(json.dumps({"ready": True}), flush=True)
seqs, wrong, end = [], [], None
try:
    while True:
        f = r.recv(timeout=30)
        if f.data != bytes([f.seq % 251]) * (64 + f.seq % 900):
            wrong.append(f.seq)
        seqs.append(f.seq)
except Exception as exc:
    end = type(exc).__name__
st = r.statistics()
r.close()
print(json.dumps({"seqs": seqs, "wrong": wrong, "end": end, "missed": st.missed, "torn": st.torn}), flush=True)
"""


class Process:
    """A script in a host that answers JSON lines."""

    def __init__(self, host: Host, script: str, *args: str) -> None:
        self.proc = host.popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, bufsize=1)

    def line(self) -> dict[str, object]:
        stdout = self.proc.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], ANSWER_S)
        text = stdout.readline() if ready else ""
        assert text, f"no answer (exit code {self.proc.poll()})"
        answer = json.loads(text)
        assert isinstance(answer, dict)
        return answer

    def say(self, text: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


def _bridges(a: Host, b: Host, key: str, *exports: str) -> tuple[str, subprocess.Popen[str]]:
    """a's bridge, exporting ``exports``, and b's (no impairment); the suffix ``@HOST:PORT`` b's
    reader uses, and b's bridge."""
    args = [arg for name in exports for arg in ("--export", name)]
    bridge(a, "--listen", f"{a.address}:{BRIDGE_PORT}", *args, "--key-file", key)
    b_bridge = bridge(b, "--listen", f"{b.address}:{BRIDGE_PORT}", "--key-file", key)
    return f"@{a.address}:{BRIDGE_PORT}", b_bridge


def _shm_objects(host: Host) -> list[str]:
    return sorted(name for _, _, files in os.walk(host.shm_dir) for name in files)


def test_a_stream_across_hosts_delivers_every_message_once_in_order_under_loss_and_impairment(
        hosts: Network, tmp_path) -> None:
    need_nft()
    a, b = hosts
    n = 200
    key = key_file(str(tmp_path))
    impairment = Impairment(duplicate=0.03, reorder=0.03, reorder_after=3, corrupt=0.03)
    bridge(a, "--listen", f"127.0.0.1:{BRIDGE_PORT}", "--export", "s", "--export", "s.credit", "--key-file", key)
    with ImpairmentRelay(a, ("127.0.0.1", BRIDGE_PORT), a_to_b=impairment, b_to_a=impairment, seed=5) as relay:
        bridge(b, "--listen", f"{b.address}:{BRIDGE_PORT}", "--key-file", key)
        for host in (a, b):
            host.drop_percent(5, interface="veth0")
        writer = Process(a, STREAM_WRITER, "s", str(n), "end")
        assert writer.line() == {"ready": True}
        reader = Process(b, STREAM_READER, f"s@{a.address}:{relay.port_a}")
        assert reader.line() == {"ready": True}
        wrote, read = writer.line(), reader.line()
        dropped = a.dropped() + b.dropped()
        for host in (a, b):
            host.drop_percent(0)
        counts = relay.counts()
    print(f"\nstream: {read}; writer {wrote}; nftables dropped {dropped}; relay {dict(counts['a_to_b'])} / "
          f"{dict(counts['b_to_a'])}")
    assert wrote["ok"] is True, wrote
    assert read["wrong"] == [] and read["got"] == n and read["end"] == "EndOfStream", read  # each once, in order
    assert dropped > 0 and counts["a_to_b"]["duplicated"] + counts["b_to_a"]["duplicated"] > 0
    assert counts["a_to_b"]["corrupted"] + counts["b_to_a"]["corrupted"] > 0
    assert wrote["resignals"] + wrote["repairs"] > 0  # losses were repaired by the stream, not by luck


BULK_WRITER = r"""
import json, random, sys
from ombm.channels.stream import Stream
name, n = sys.argv[1], int(sys.argv[2])
s = Stream.create(name, slot_bytes=1 << 20, slots=4)
print(json.dumps({"ready": True}), flush=True)
for i in range(n):
    s.send(random.Random(i).randbytes(1 << 20), timeout=60)
s.flush(timeout=60)
stats = s.statistics()
s.close(flush_timeout=10)
print(json.dumps({"ok": True, "repairs": stats.repairs, "resignals": stats.resignals}), flush=True)
"""

BULK_READER = r"""
import json, random, sys
from ombm.channels.stream import Stream
r = Stream.open(sys.argv[1], timeout=30)
print(json.dumps({"ready": True}), flush=True)
got, wrong, end = 0, [], None
try:
    while True:
        if bytes(r.recv(timeout=60)) != random.Random(got).randbytes(1 << 20):
            wrong.append(got)
        got += 1
except Exception as exc:
    end = type(exc).__name__
r.close()
print(json.dumps({"got": got, "wrong": wrong, "end": end}), flush=True)
"""

STATUS = ("import json; from ombm.core import remote; "
          "print(json.dumps(remote.raise_for(remote.request({'op': 'status'}, 10.0))['stats']))")


@pytest.mark.parametrize("path", ["direct", "impaired"])
def test_a_stream_of_1_mib_messages_crosses_whole(hosts: Network, tmp_path, path: str) -> None:
    """Bulk on the native path: every message whole, once, in order. ``direct``: no key (each later
    part checked while copied into place), runs of datagrams per send and joined on receipt.
    ``impaired``: with a key, through the impairment relay duplicating and reordering datagrams both
    ways (none lost or corrupted: a 1 MiB message is 730 datagrams, and the bridge, best effort, sends
    no part again; a lost part costs the whole message, which the stream repairs whole)."""
    a, b = hosts
    n = 24
    exports = ("--export", "bulk", "--export", "bulk.credit")
    if path == "direct":
        bridge(a, "--listen", f"{a.address}:{BRIDGE_PORT}", "--insecure", "--peer", f"{b.address}:{BRIDGE_PORT}",
               *exports)
        bridge(b, "--listen", f"{b.address}:{BRIDGE_PORT}", "--insecure", "--peer", f"{a.address}:{BRIDGE_PORT}")
        relay, port = None, BRIDGE_PORT
    else:
        key = key_file(str(tmp_path))
        impairment = Impairment(duplicate=0.03, reorder=0.03, reorder_after=3)
        bridge(a, "--listen", f"127.0.0.1:{BRIDGE_PORT}", *exports, "--key-file", key)
        relay = ImpairmentRelay(a, ("127.0.0.1", BRIDGE_PORT), a_to_b=impairment, b_to_a=impairment, seed=6)
        relay.__enter__()
        bridge(b, "--listen", f"{b.address}:{BRIDGE_PORT}", "--key-file", key)
        port = relay.port_a
    try:
        writer = Process(a, BULK_WRITER, "bulk", str(n))
        assert writer.line() == {"ready": True}
        reader = Process(b, BULK_READER, f"bulk@{a.address}:{port}")
        assert reader.line() == {"ready": True}
        wrote, read = writer.line(), reader.line()
        counts = relay.counts() if relay is not None else {}
    finally:
        if relay is not None:
            relay.__exit__(None, None, None)
    stats = json.loads(b.python(STATUS).stdout)
    print(f"\nbulk, {path}: {read}; writer {wrote}; relay {counts}; bridge b: "
          f"{ {k: v for k, v in stats.items() if v and ('drop' in k or 'native' in k or 'updates' in k)} }")
    assert wrote["ok"] is True, wrote
    assert read == {"got": n, "wrong": [], "end": "EndOfStream"}, read
    assert stats["native_in"] >= n and stats["internal_errors"] == 0, stats  # the native assembler's updates
    if relay is not None:
        assert all(sum(c[what] for c in counts.values()) > 0 for what in ("duplicated", "reordered")), counts


def test_a_raw_channel_across_hosts_delivers_good_frames_best_effort(hosts: Network, tmp_path) -> None:
    need_nft()
    a, b = hosts
    n = 400
    key = key_file(str(tmp_path))
    impairment = Impairment(duplicate=0.02, reorder=0.03, reorder_after=3, corrupt=0.05)
    bridge(a, "--listen", f"127.0.0.1:{BRIDGE_PORT}", "--export", "raw", "--key-file", key)
    with ImpairmentRelay(a, ("127.0.0.1", BRIDGE_PORT), a_to_b=impairment, b_to_a=impairment, seed=9) as relay:
        bridge(b, "--listen", f"{b.address}:{BRIDGE_PORT}", "--key-file", key)
        writer = Process(a, RAW_WRITER, "raw", str(n))
        assert writer.line() == {"ready": True}
        reader = Process(b, RAW_READER, f"raw@{a.address}:{relay.port_a}")
        assert reader.line() == {"ready": True}
        for host in (a, b):
            host.drop_percent(5, interface="veth0")
        writer.say()
        assert writer.line() == {"written": n}
        read = reader.line()
        writer.say()
        for host in (a, b):
            host.drop_percent(0)
        counts = relay.counts()
    seqs = read["seqs"]
    assert isinstance(seqs, list)
    print(f"\nraw: {len(seqs)} of {n} frames delivered, missed {read['missed']}, torn {read['torn']}, end "
          f"{read['end']}; relay corrupted {counts['a_to_b']['corrupted']}")
    assert read["wrong"] == []                                   # never a wrong frame
    assert seqs == sorted(set(seqs)) and all(1 <= s <= n for s in seqs)  # ordered, each once
    assert len(seqs) > n // 10                                   # best effort (how much: the load's), not nothing
    assert len(seqs) + read["missed"] == seqs[-1]                # every loss before the last frame counted
    assert read["end"] in ("EndOfStream", "ChannelTimeout", "ChannelBrokenError")
    assert counts["a_to_b"]["corrupted"] > 0


@pytest.mark.parametrize("victim", ["writer", "reader"])
def test_a_killed_end_is_noticed_on_the_other_host(hosts: Network, tmp_path, victim: str) -> None:
    a, b = hosts
    key = key_file(str(tmp_path))
    remote, _ = _bridges(a, b, key, "k", "k.credit")
    writer = Process(a, STREAM_WRITER, "k", "5", "hold")
    assert writer.line() == {"ready": True}
    reader = Process(b, STREAM_READER, f"k{remote}")
    assert reader.line() == {"ready": True}
    assert writer.line() == {"sent": 5}
    if victim == "writer":
        writer.kill()
        read = reader.line()           # it had the five messages, then the writer went
        assert read["got"] == 5 and read["end"] == "ChannelBrokenError", read
    else:
        reader.kill()
        writer.say()                   # flush: the reader is gone, so the stream is broken
        wrote = writer.line()
        assert wrote["ok"] is False and wrote["type"] == "ChannelBrokenError", wrote


def test_a_bridge_killed_leaves_nothing_gc_cannot_reclaim(hosts: Network, tmp_path) -> None:
    a, b = hosts
    key = key_file(str(tmp_path))
    remote, b_bridge = _bridges(a, b, key, "g", "g.credit")
    writer = Process(a, STREAM_WRITER, "g", "3", "hold")
    assert writer.line() == {"ready": True}
    reader = Process(b, STREAM_READER, f"g{remote}")
    assert reader.line() == {"ready": True}
    assert writer.line() == {"sent": 3}
    assert any(".at." in name for name in _shm_objects(b))     # the replicas
    b_bridge.send_signal(signal.SIGKILL)
    b_bridge.wait(30)
    read = reader.line()               # the reader's bridge is gone: the stream is broken
    assert read["got"] == 3 and read["end"] == "ChannelBrokenError", read
    reader.proc.wait(30)
    writer.kill()
    gc = b.run([sys.executable, "-c", CLI, "gc"])
    assert gc.returncode == 0, gc.stderr
    assert _shm_objects(b) == [], gc.stdout
