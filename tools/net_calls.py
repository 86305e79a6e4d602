"""The call rows of ``ombm bench net`` alone, for A/Bs of the latency across hosts (issue 12).

As root, from the project's root: ``PYTHONPATH=<build>/src python3 tools/net_calls.py [CALLS]
[--sizes 32] [--placements cross-cpu,same-cpu] [--peers udp,zmq,grpc] [--bridge-spin-us N]``. Makes the bench's two hosts
(namespaces on one veth pair, a bridge in each, the echo service in host *b*), times CALLS calls of
each size from host *a* with ombm through the bridges and with each peer asked for (the raw UDP
echo, pyzmq REQ/REP, gRPC: ``ombm.cli.bench.net``'s own pieces, so the figures are the bench's), and
prints one JSON line: the median round trip (µs) per row, the load average before and after. Run it
with ``/tmp/vbench/bin/python`` (or any Python with the ``[bench]`` extra) for the peers. Two builds
compare by running it alternately with each build's ``src`` on ``PYTHONPATH``, in one sitting.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

from ombm.cli.bench import net, netns
from ombm.cli.bench.affinity import PLACEMENTS

_SPINS = ("import json; from ombm.core import remote; s = remote.request({'op': 'status'}, 5.0)['stats']; "
          "print(json.dumps({k: s.get(k) for k in ('spins', 'spin_wins', 'spin_learnt_ns', 'native_in')}))")
PEERS = {"udp": 0, "zmq": 1, "grpc": 2}  # index in net.CALL_PEERS


def option(args: list[str], name: str, default: str) -> str:
    if name in args:
        at = args.index(name)
        value = args[at + 1]
        del args[at:at + 2]
        return value
    return default


def main() -> int:
    args = sys.argv[1:]
    sizes = [int(s) for s in option(args, "--sizes", "32").split(",")]
    placements = option(args, "--placements", "cross-cpu,same-cpu").split(",")
    peers = [p for p in option(args, "--peers", "udp,zmq").split(",") if p]
    bridge_spin = option(args, "--bridge-spin-us", "")  # the bridges' OMBM_SPIN_US alone
    bridge_env = {"OMBM_SPIN_US": bridge_spin} if bridge_spin else None
    calls = int(args[0]) if args else 3_000
    plan = net.Plan(calls, max(50, calls // 20), 0, 1)
    out: dict[str, object] = {"load_before": os.getloadavg()[0]}
    netns.sweep()
    with netns.Network.create(2, tag="c") as hosts:
        a, b = hosts
        for host, other in ((a, b), (b, a)):
            exports = ["--service", net._SERVICE] if host is b else []
            net._start_bridge(host, f"{host.address}:7000", "--insecure", "--peer", f"{other.address}:7000",
                              *exports, env=bridge_env)
        name = f"{net._SERVICE}@{b.address}:7000"
        for placement in placements:
            client_cpu, server_cpu = PLACEMENTS[placement]
            server = net._OmbmServer(b, server_cpu)
            try:
                for size in sizes:
                    samples = net._ombm_calls(a, name, size, plan, client_cpu)
                    out[f"ombm {size} B {placement}"] = round(statistics.median(samples), 1)
            finally:
                server.stop()
        for label, host in (("bridge a", a), ("bridge b", b)):  # what the bridges' spins did
            status = host.python(_SPINS)
            out[label] = json.loads(status.stdout) if status.returncode == 0 else status.stderr[-200:]
        with net._aimed_at(b), a.entered():
            for placement in placements:
                for key in peers:
                    peer = net.CALL_PEERS[PEERS[key]]
                    ok, why = peer.available()
                    if not ok:
                        out[f"{key} {placement}"] = why
                        continue
                    for size in sizes:
                        samples = peer.roundtrip(size, calls, PLACEMENTS[placement], plan.warmup)
                        out[f"{key} {size} B {placement}"] = round(statistics.median(samples), 1)
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
