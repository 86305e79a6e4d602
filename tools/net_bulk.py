"""Bulk across hosts at the segment level: how fast two bridges move whole 1 MiB units (issue 12).

As root, from the project's root: ``PYTHONPATH=src python3 tools/net_bulk.py [SECONDS] [--mtu BYTES] [--window UNITS]``.
Makes two hosts (``ombm.cli.bench.netns``, removed at the end), a bridge in each (``ombm bridge``,
no key, as ``ombm bench net``), a writer in host *a* that rewrites the eight 1 MiB units of an exported
segment one after another (each write changes the unit's first byte, so every update carries the
whole unit: 743 full-MTU datagrams), and a reader in host *b* that counts the units completed in its
replica (their signals) for SECONDS and acknowledges each by writing its count into a ninth unit (a
small delta back). The writer keeps at most WINDOW units (``--window``, default 2) unacknowledged, as
a stream's credit would: the socket buffers hold them, so what is measured is what the datagram path
carries, not loss from overrunning it (an update lost anyway stalls the writer 0.2 s, counted). Beside it, in the same run, a plain TCP socket's throughput
over the same veth (256 messages of 1 MiB, timed to the reader's acknowledgement). It prints also the
CPU time (user + system) each of the four processes spent per unit written, and the TCP writer's
and reader's per MiB (their whole lives, start-up included): what the code costs whatever else runs
on the machine (throughput on a loaded host says less).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ombm.cli.bench import netns

UNIT = 1 << 20
PORT = 7000
CLI = "import sys; from ombm.cli.main import main; sys.exit(main(sys.argv[1:]))"
WRITER = """
import struct, sys, time, ombm
unit, units, window = 1 << 20, 8, int(sys.argv[1])
seg = ombm.create_segment(unit * (units + 1), name="bulk", unit=unit)
region = seg.bind(writable=True)
ack_at = units * unit + unit - 8            # the reader's count, in the last 8 bytes of the last unit
acked = [0]
ombm.signal_handler(region.address + units * unit, unit,
                    lambda address: acked.__setitem__(0, struct.unpack_from("<Q", region.read(ack_at, 8))[0]))
images = [bytes([1 + i]) + bytes(unit - 1) for i in range(2)]
print("ready", flush=True)
seconds = float(sys.stdin.readline())
end, n, stalls = time.monotonic() + seconds, 0, 0
while time.monotonic() < end:
    while n - acked[0] >= window:           # at most `window` units in flight
        if not ombm.sig_wait(0.2):
            stalls += 1                      # an update lost on the way: go on without its ack
            acked[0] = n
    region.write((n % units) * unit, images[(n // units) % 2])
    n += 1
print(n, stalls, flush=True)
"""
READER = """
import struct, sys, time, ombm
unit, units = 1 << 20, 8
seg = ombm.open_segment(sys.argv[1])
region = seg.bind(writable=True)
count = [0]

def got(address):
    count[0] += 1
    region.write(units * unit + unit - 8, struct.pack("<Q", count[0]))   # the ack: a small delta back

ombm.signal_handler(region.address, units * unit, got)
print("ready", flush=True)
seconds = float(sys.stdin.readline())
ombm.sig_wait(1.0)  # the first unit: the clock starts there
start, t0 = count[0], time.monotonic()
while time.monotonic() - t0 < seconds:
    ombm.sig_wait(0.1)
print((count[0] - start) / (time.monotonic() - t0), flush=True)
"""
TCP_READER = """
import os, socket, sys
listener = socket.create_server((sys.argv[1], 7100))
print("ready", flush=True)
conn, _ = listener.accept()
buf, total, want = bytearray(1 << 20), 0, 256 << 20
view = memoryview(buf)
while total < want:
    n = conn.recv_into(view)
    if not n:
        break
    total += n
conn.sendall(b"k")
t = os.times()
print(t.user + t.system, flush=True)
"""
TCP_WRITER = """
import os, socket, sys, time
sock = socket.create_connection((sys.argv[1], 7100))
message = bytes(1 << 20)
t0 = time.perf_counter()
for _ in range(256):
    sock.sendall(message)
sock.recv(1)
rate = (256 << 20) / (time.perf_counter() - t0) / 1e6
t = os.times()
print(rate, t.user + t.system, flush=True)
"""
STATUS = ("from ombm.core import remote; s = remote.raise_for(remote.request({'op': 'status'}, 10.0))['stats']; "
          "print(s['dropped_incomplete'], s['updates_in'], s['datagrams_in'])")


TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    text = process.stdout.readline()
    if not text:
        raise RuntimeError(f"{process.args!r} ended early (exit status {process.wait(10)})")
    return text.strip()


def main() -> int:
    args = sys.argv[1:]
    mtu = []
    if "--mtu" in args:
        at = args.index("--mtu")
        mtu = ["--mtu", args[at + 1], "--ip-fragments"]  # datagrams longer than the veth's MTU: IP fragments them
        del args[at:at + 2]
    window = "2"
    if "--window" in args:
        at = args.index("--window")
        window = args[at + 1]
        del args[at:at + 2]
    seconds = float(args[0]) if args else 5.0
    with netns.Network.create(2, tag="q") as hosts:
        a, b = hosts
        load = os.getloadavg()[0]
        bridges = []
        for host, other, extra in ((a, b, ["--export", "bulk"]), (b, a, [])):
            bridge = host.popen([sys.executable, "-c", CLI, "bridge", "--listen", f"{host.address}:{PORT}",
                                 "--insecure", "--peer", f"{other.address}:{PORT}", *extra, *mtu],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
            line(bridge)
            bridges.append(bridge)
        writer = a.popen([sys.executable, "-c", WRITER, window], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line(writer)
        reader = b.popen([sys.executable, "-c", READER, f"bulk@{a.address}:{PORT}"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        line(reader)
        processes = bridges + [writer, reader]
        cpu_before = [cpu_s(p.pid) for p in processes]
        for process in (writer, reader):
            assert process.stdin is not None
            process.stdin.write(f"{seconds}\n")
            process.stdin.flush()
        units_per_s = float(line(reader))
        written, stalls = (int(x) for x in line(writer).split())
        cpu_ms = [(cpu_s(p.pid) - before) * 1e3 / written for p, before in zip(processes, cpu_before)]
        counters = b.python(STATUS).stdout.split()
        tcp_reader = b.popen([sys.executable, "-c", TCP_READER, b.address], stdout=subprocess.PIPE, text=True)
        line(tcp_reader)
        time.sleep(0.1)
        tcp, tcp_writer_s = (float(x) for x in a.run([sys.executable, "-c", TCP_WRITER, b.address], timeout=120.0,
                                                      check=True).stdout.split())
        tcp_reader_s = float(line(tcp_reader))
        tcp_reader.wait(30)
        bridge_mb = units_per_s * UNIT / 1e6
        print(f"load average at start {load:.2f}, at end {os.getloadavg()[0]:.2f}; {seconds:g} s; "
              f"mtu {mtu[1] if mtu else 'default'}")
        print(f"1 MiB units through the bridges: {bridge_mb:,.0f} MB/s ({units_per_s:,.0f} units/s; "
              f"{written} written, window {window}, {stalls} stalls; host b: dropped_incomplete {counters[0]}, updates_in {counters[1]}, "
              f"datagrams_in {counters[2]})")
        print("CPU ms per 1 MiB unit written: " + ", ".join(
            f"{who} {ms:.2f}" for who, ms in zip(("bridge a", "bridge b", "writer", "reader"), cpu_ms)))
        print(f"TCP socket, 1 MiB messages:     {tcp:,.0f} MB/s; bridges / TCP = {bridge_mb / tcp:.0%}")
        tcp_ms = (tcp_writer_s + tcp_reader_s) * 1e3 / 256  # each process's whole life: its start included
        print(f"CPU ms per MiB: the four ombm processes {sum(cpu_ms):.2f}, TCP's two {tcp_ms:.2f} "
              f"(writer {tcp_writer_s * 1e3 / 256:.2f}, reader {tcp_reader_s * 1e3 / 256:.2f}); "
              f"TCP / ombm = {tcp_ms / sum(cpu_ms):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
