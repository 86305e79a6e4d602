"""Run tools/relay_chain.c across two namespaces: the floor of a call through two bridges (issue 12).

As root, from the project's root: ``python3 tools/relay_chain.py [N]``. Compiles the C program into a
temporary folder, makes two hosts (``ombm.cli.bench.netns``, removed at the end) and prints, per wait
policy and placement, the median 32-byte round trip of a direct UDP echo (client in host a, server in
host b) and of the chain client -> relay A -> relay B -> server (relays unpinned, as ``ombm bench net``
runs the bridges). A policy is "spin budget of the relays / of the client and server" in µs: spin with
``sched_yield`` for that long, then block in ``recv``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from ombm.cli.bench import netns  # noqa: E402

POLICIES = ((0, 0), (50, 0), (0, 50), (50, 50), (200, 200))
PLACEMENTS = {"cross-cpu": (0, 1), "same-cpu": (0, 0)}


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "relay_chain")
        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay_chain.c")
        subprocess.run(["cc", "-O2", "-o", exe, source], check=True)
        with netns.Network.create(2, tag="p") as hosts:
            a, b = hosts
            print(f"load average at start: {os.getloadavg()[0]:.2f}")
            print("| placement | policy (relays/ends µs) | chain µs | chain / C echo |")
            print("|---|---|---|---|")
            port = 9000
            for placement, (ccpu, scpu) in PLACEMENTS.items():
                port += 10
                echo_server = b.popen(["taskset", "-c", str(scpu), exe, "server", str(port), "0"])
                time.sleep(0.2)
                try:  # the floor: blocking on both sides, as the Python echo of `ombm bench net`
                    echo = float(a.run([exe, "client", b.address, str(port), "0", str(n), str(ccpu)],
                                       check=True).stdout)
                finally:
                    echo_server.kill()
                    echo_server.wait()
                print(f"| {placement} | direct C UDP echo, blocking | {echo:.1f} | 1.0x |", flush=True)
                for relay_spin, end_spin in POLICIES:
                    port += 10
                    started = [
                        b.popen(["taskset", "-c", str(scpu), exe, "server", str(port + 1), str(end_spin)]),
                        b.popen([exe, "relay", str(port + 2), str(port + 1), a.address, str(port + 3),
                                 str(relay_spin)]),
                        a.popen([exe, "relay", str(port + 3), str(port + 4), b.address, str(port + 2),
                                 str(relay_spin)]),
                    ]
                    time.sleep(0.2)
                    try:
                        chain = a.run([exe, "client", "127.0.0.1", str(port + 3), str(end_spin), str(n),
                                       str(ccpu)], check=True).stdout
                    finally:
                        for process in started:
                            process.kill()
                            process.wait()
                    print(f"| {placement} | chain, {relay_spin}/{end_spin} | {float(chain):.1f} | "
                          f"{float(chain) / echo:.1f}x |", flush=True)
            print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
