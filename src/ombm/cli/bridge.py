"""``ombm bridge``: this host's bridge in the foreground (paper §3.2.3; docs/net.md).

    ombm bridge --listen HOST:PORT [--export NAME]... [--service NAME]... [--peer HOST:PORT]... [--key-file PATH]
                [--insecure] [--multicast GROUP:PORT] [--keepalive SECONDS] [--mtu BYTES] [--ip-fragments]
                [--no-native]

It prints one line when it listens (``ombm bridge: listening on HOST:PORT ...``), serves until SIGTERM
or SIGINT (Ctrl-C), then says BYE to its peers, releases its replicas and prints its counters.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from rich.console import Console
from rich.table import Table


def add_subcommand(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bridge`` to an argparse ``subparsers``."""
    p = subparsers.add_parser("bridge", help="replicate segments with other hosts over UDP (foreground)",
                              description="Export local segments to, and import segments from, the bridges of "
                                          "other hosts; remote names are name@HOST:PORT.")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="the UDP address to listen on")
    p.add_argument("--export", action="append", default=[], metavar="NAME",
                   help="a local segment other hosts may import (repeat; nothing is exported unless named)")
    p.add_argument("--service", action="append", default=[], metavar="NAME",
                   help="an RPC service of this host that other hosts may call as NAME@HOST:PORT "
                        "(repeat; the same as --export rpc-NAME)")
    p.add_argument("--peer", action="append", default=[], metavar="HOST:PORT",
                   help="a bridge heard without a key (repeat); ombm.rpc.locate asks the peers too")
    p.add_argument("--key-file", metavar="PATH",
                   help="a key shared by the bridges (mode 0600): every datagram is authenticated")
    p.add_argument("--insecure", action="store_true",
                   help="without a key, listen beyond loopback anyway (the network must be trusted)")
    p.add_argument("--mtu", type=int, default=None, metavar="BYTES",
                   help="the largest UDP payload to send (default 1472: a 1500-byte IPv4 MTU); less on a "
                        "path found narrower (the kernel's path MTU, probes)")
    p.add_argument("--ip-fragments", action="store_true",
                   help="let IP fragment datagrams longer than a path's MTU instead of learning it (with a "
                        "large --mtu, e.g. 65507, on a trusted link: fewer, larger datagrams)")
    p.add_argument("--no-native", action="store_true",
                   help="take every datagram on the Python path, the reference (by default the common case, "
                        "single-datagram updates, takes the native one: docs/net.md)")
    p.add_argument("--multicast", metavar="GROUP:PORT",
                   help="an IPv4 multicast group this bridge joins to locate services and be located "
                        "(ombm.rpc.locate); every bridge of the network gives the same one")
    p.add_argument("--keepalive", type=float, default=None, metavar="SECONDS",
                   help="a bridge this one replicates with that has been quiet this long gets a PING; "
                        "silent for 3 of them it is taken as dead and its replicas close (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ombm.net import Bridge, load_key
    from ombm.net.bridge import KEEPALIVE_S
    from ombm.rpc.slots import well_known_name
    from ombm.transport.datagram import DEFAULT_MTU

    err = Console(stderr=True)
    try:
        key = load_key(args.key_file) if args.key_file else None
    except (OSError, ValueError) as exc:
        err.print(f"ombm bridge: {exc}", markup=False)
        return 2
    bridge: Bridge | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        if bridge is not None:
            bridge.stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            exports = [*args.export, *(well_known_name(name) for name in args.service)]
            bridge = Bridge(args.listen, exports=exports, peers=args.peer, key=key, insecure=args.insecure,
                            mtu=args.mtu or DEFAULT_MTU, multicast=args.multicast,
                            keepalive_s=KEEPALIVE_S if args.keepalive is None else args.keepalive,
                            ip_fragments=args.ip_fragments, native=not args.no_native)
        except (OSError, ValueError) as exc:  # PermissionError, an address in use, a bridge already here
            err.print(f"ombm bridge: {exc}", markup=False)
            return 2
        with bridge:
            host, port = bridge.address
            print(f"ombm bridge: listening on {host}:{port}; exports: {', '.join(exports) or '-'}; "
                  f"peers: {', '.join(args.peer) or '-'}; multicast: {args.multicast or '-'}; "
                  f"key: {'yes' if key else 'no'}", flush=True)
            bridge.serve_forever()
        _print_stats(bridge.stats)
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _print_stats(stats: dict[str, int]) -> None:
    table = Table(title="ombm bridge: counters")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for name, value in stats.items():
        table.add_row(name, str(value))
    Console(file=sys.stdout).print(table)
