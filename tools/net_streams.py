"""The Stream and call rows of ``ombm bench net`` alone, for an A/B of two builds (issue 12).

As root, from the project's root: ``PYTHONPATH=src python3 tools/net_streams.py [MIB] [--calls N] [--repeats R]``.
Makes two hosts as ``ombm bench net`` does and runs, with the suite's own code
(``ombm.cli.bench.net``): ombm's rows (the null, 32 B and 1 KiB call through the two bridges in each
placement, and ``ombm Stream via bridge`` at 64 KiB and 1 MiB messages, MIB MiB one way per size,
best of R), then the raw UDP echo's 32 B call (the floor) and a plain TCP socket's Stream row over
the same link. N calls per size (default 2,000; the suite's full run makes 20,000). Prints one line
per figure; the figures that matter are ratios within one run (the machine may be loaded: the load
average is printed).
"""

from __future__ import annotations

import os
import sys

from ombm.cli.bench import net, netns


def option(args: list[str], name: str, default: int) -> int:
    if name in args:
        at = args.index(name)
        value = int(args[at + 1])
        del args[at:at + 2]
        return value
    return default


def main() -> int:
    args = sys.argv[1:]
    calls = option(args, "--calls", 2000)
    repeats = option(args, "--repeats", 1)
    mib = int(args[0]) if args else 64
    plan = net.Plan(calls, max(50, calls // 10), mib << 20, repeats)
    load = os.getloadavg()[0]
    netns.sweep()
    with netns.Network.create(2, tag="s") as (a, b):
        rows = net.ombm_rows(a, b, plan, lambda what: None)
        with net._aimed_at(b), a.entered():
            floor = net._round_trips(net.CALL_PEERS[0], net.STREAM_PLACEMENT, plan, lambda what: None)
            tcp = net._throughput(net.STREAM_PEERS[0], plan, lambda what: None)
    print(f"load average at start {load:.2f}, at end {os.getloadavg()[0]:.2f}; {mib} MiB per size; {calls} calls")
    stream = next(r for r in rows if isinstance(r, net.Throughput))
    for size in net.STREAM_SIZES:
        ours, theirs = stream.rates.get(size, float("nan")), tcp.rates.get(size, float("nan"))
        print(f"Stream {size >> 10} KiB: ombm {ours / 1e6:,.0f} MB/s, TCP {theirs / 1e6:,.0f} MB/s, "
              f"ombm / TCP = {ours / theirs:.0%}")
    for row in rows:
        if isinstance(row, net.RoundTrip) and row.placement == net.STREAM_PLACEMENT:
            call = row.latencies[32].median_us
            print(f"32 B call, {row.placement}: ombm {call:.1f} us, UDP echo {floor.latencies[32].median_us:.1f} us, "
                  f"ombm / echo = {call / floor.latencies[32].median_us:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
