"""Round trips across two bridges on loopback against a raw Python UDP echo, in one sitting.

Two "hosts" on this machine (each its own OMBM_SHM_DIR and ``ombm bridge`` on 127.0.0.1). On host A a
process writes 32 bytes into the line at offset 0 of the segment "ping" (exported by A's bridge); on
host B a process that opened ``ping@127.0.0.1:PORT`` gets the signal and writes 32 bytes into the line at
offset 64, whose signal comes back to A: one round trip through four processes and two UDP hops each
way. The peer: a Python client and echo server exchanging 32-byte UDP datagrams.

    python tools/net_pingpong.py --rounds 2000

The figures are medians of one sitting; compare them with each other, not across machines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
while True:
    data, peer = s.recvfrom(2048)
    if data == b"stop":
        break
    s.sendto(data, peer)
"""

PONG = r"""
import sys, ombm
seg = ombm.open_segment(sys.argv[1])
region = seg.bind()
def on(address):
    if address - region.address == 0:
        region.write(64 + 32, region.read(32, 32))   # 32 bytes ending at line 1's last byte
ombm.signal_handler(region.address, 64, on)
print("ready", flush=True)
while True:
    ombm.sig_wait(1.0)
"""

PING = r"""
import statistics, sys, time, ombm
rounds = int(sys.argv[1])
seg = ombm.create_segment(4096, name="ping", unit=64)
region = seg.bind()
got = []
ombm.signal_handler(region.address + 64, 64, lambda a: got.append(1))
print("ready", flush=True)
sys.stdin.readline()
times = []
for i in range(rounds + 100):
    n = len(got)
    t0 = time.perf_counter_ns()
    region.write(32, i.to_bytes(32, "little"))
    while len(got) == n:
        if ombm.sig_wait(2.0) == 0.0 and len(got) == n:
            break  # lost: best effort
    if len(got) > n and i >= 100:
        times.append(time.perf_counter_ns() - t0)
print(statistics.median(times) / 1000, len(times), flush=True)
"""


def udp_echo(rounds: int) -> float:
    server = subprocess.Popen([sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    payload = b"x" * 32
    times = []
    for i in range(rounds + 100):
        t0 = time.perf_counter_ns()
        s.send(payload)
        s.recv(2048)
        if i >= 100:
            times.append(time.perf_counter_ns() - t0)
    s.send(b"stop")
    server.wait(10)
    s.close()
    return statistics.median(times) / 1000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bridged(rounds: int) -> tuple[float, int]:
    roots = [tempfile.mkdtemp(prefix="ombm-pingpong-", dir="/dev/shm") for _ in range(2)]
    envs = [dict(os.environ, OMBM_SHM_DIR=root) for root in roots]
    pa, pb = free_port(), free_port()
    cli = "import sys; from ombm.cli.main import main; sys.exit(main(sys.argv[1:]))"
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-c", cli, "bridge", "--listen", f"127.0.0.1:{pa}",
                                       "--export", "ping", "--peer", f"127.0.0.1:{pb}"], env=envs[0],
                                      stdout=subprocess.PIPE, text=True))
        procs.append(subprocess.Popen([sys.executable, "-c", cli, "bridge", "--listen", f"127.0.0.1:{pb}",
                                       "--peer", f"127.0.0.1:{pa}"], env=envs[1], stdout=subprocess.PIPE, text=True))
        for p in procs:
            p.stdout.readline()
        ping = subprocess.Popen([sys.executable, "-c", PING, str(rounds)], env=envs[0], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(ping)
        ping.stdout.readline()
        pong = subprocess.Popen([sys.executable, "-c", PONG, f"ping@127.0.0.1:{pa}"], env=envs[1],
                                stdout=subprocess.PIPE, text=True)
        procs.append(pong)
        pong.stdout.readline()
        ping.stdin.write("go\n")
        ping.stdin.flush()
        median_us, done = ping.stdout.readline().split()
        return float(median_us), int(done)
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    echo = udp_echo(args.rounds)
    through, done = bridged(args.rounds)
    print(f"raw Python UDP echo, 32 B:           {echo:8.1f} µs median round trip")
    print(f"segment across two bridges, 32 B:    {through:8.1f} µs median round trip ({done}/{args.rounds} "
          f"completed, {through / echo:.2f}x the echo)")


if __name__ == "__main__":
    main()
