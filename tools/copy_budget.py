"""The copy budget of an echo call (issue 13, item 4): what one copy of a payload costs on this
machine, and so what the copies each row of ``ombm bench rpc`` makes cost at the least.

One sitting, this process on CPU 0 and a forked helper on CPU 1 (both pinned), over a shared
anonymous mapping. For each size it times (median µs of ``--reps`` copies):

- ``memcpy, local``: a copy whose source this CPU wrote last (the caller's own payload), into
  memory the other CPU read last (a slot or span the peer read the time before): a memoryview
  slice assignment (memmove, a fraction of a µs of Python around it);
- ``copy+crc, local``: the same copy with the CRC32C fused (``_native.copy_checksum``, what ombm's
  writes into a slot or a bulk span do);
- ``memcpy, remote``: a copy of what the other CPU has just written (a request or a reply the peer
  wrote), into this process's own memory: the same;
- ``copy+crc, remote``: the same with the CRC32C fused (what ombm's reads out of a slot or a span do).

Then, for the 1 MiB (and 64 KiB) echo, the copies each row makes per call and what they cost at
the least (the sum of the copies alone, no waits, no Python), beside the measured medians one may
pass with ``--measured`` (from the same sitting's ``ombm bench rpc``):

- iceoryx2 req/resp: the client copies the payload into a loaned request (local), the server
  copies the request into a loaned response (remote), the client copies the response out
  (``string_at``: remote): 3 copies, no checksum;
- iceoryx2 req/resp (views): the same without the client's copy out: 2;
- ombm (bytes): the client copies into its bulk span (local, CRC), the server out of it (remote,
  CRC) into bytes it owns, the server its result into its span (local, CRC), the client out
  (remote, CRC): 4 copies; with bytes both ends own what they hold, so a copy out on each side is
  the least the hostile-peer rule allows (a sender can still write its span);
- ombm views: the client's copy in and the server's copy of the lent request into its span
  (remote, CRC): 2.

    PYTHONPATH=src python3 tools/copy_budget.py --reps 200

It prints the load average: say what it was. Figures are this machine's; the ratios between rows
are what carry over.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing as mp
import os
import statistics
import sys
import time

from ombm import _native

SIZES = {"1 KiB": 1024, "64 KiB": 65536, "1 MiB": 1 << 20}


def _helper(conn, shared: mmap.mmap, size: int) -> None:  # type: ignore[no-untyped-def]
    """On CPU 1: on "w" write the whole shared buffer (so its lines are this CPU's, modified), on "r"
    read it all (so they are shared here), then answer."""
    os.sched_setaffinity(0, {1})
    view = memoryview(shared)[:size]
    mine = bytearray(os.urandom(size))
    while True:
        what = conn.recv()
        if what == "w":
            view[:] = mine
        elif what == "r":
            _native.checksum(view)
        else:
            return
        conn.send("ok")


def _time(fn, reps: int, before) -> float:  # type: ignore[no-untyped-def]
    """Median µs of fn() over reps runs, each after before() (not timed)."""
    times = []
    for _ in range(reps):
        before()
        t = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1000


def measure(size: int, reps: int) -> dict[str, float]:
    shared = mmap.mmap(-1, size)
    parent, child = mp.get_context("fork").Pipe()
    helper = mp.get_context("fork").Process(target=_helper, args=(child, shared, size), daemon=True)
    helper.start()
    try:
        os.sched_setaffinity(0, {0})
        view = memoryview(shared)[:size]
        src = bytearray(os.urandom(size))
        dst = bytearray(size)
        dst_view = memoryview(dst)

        def peer(what: str):  # type: ignore[no-untyped-def]
            def ask() -> None:
                parent.send(what)
                parent.recv()
                src[0] ^= 1  # the local source: written here last
            return ask

        out = {
            "memcpy, local": _time(lambda: view.__setitem__(slice(None), src), reps, peer("r")),
            "copy+crc, local": _time(lambda: _native.copy_checksum(view, src), reps, peer("r")),
            "memcpy, remote": _time(lambda: dst_view.__setitem__(slice(None), view), reps, peer("w")),
            "copy+crc, remote": _time(lambda: _native.copy_checksum(dst, view), reps, peer("w")),
        }
        view.release()
        dst_view.release()
        parent.send("stop")
        return out
    finally:
        helper.join(10)
        if helper.is_alive():
            helper.kill()
            helper.join()
        shared.close()


ROWS = {  # copies per echo call: (kind, count)
    "iceoryx2 req/resp": (("memcpy, local", 1), ("memcpy, remote", 2)),
    "iceoryx2 req/resp (views)": (("memcpy, local", 1), ("memcpy, remote", 1)),
    "ombm": (("copy+crc, local", 2), ("copy+crc, remote", 2)),
    "ombm views": (("copy+crc, local", 1), ("copy+crc, remote", 1)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--measured", nargs="*", default=[], metavar="ROW=US",
                        help="a row's measured 1 MiB echo median, e.g. 'ombm=606' 'iceoryx2 req/resp=255'")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2 and os.cpu_count() and os.cpu_count() < 2:  # type: ignore[operator]
        print("needs two CPUs", file=sys.stderr)
        return 1
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    found = {label: measure(size, args.reps if size <= 65536 else max(20, args.reps // 4))
             for label, size in SIZES.items()}
    kinds = list(next(iter(found.values())))
    print("\n| µs, median | " + " | ".join(SIZES) + " |")
    print("|:--|" + "--:|" * len(SIZES))
    for kind in kinds:
        print(f"| {kind} | " + " | ".join(f"{found[label][kind]:,.2f}" for label in SIZES) + " |")
    measured = dict(item.split("=", 1) for item in args.measured)
    for label in ("64 KiB", "1 MiB"):
        print(f"\nEcho of {label}: the copies alone (µs)\n")
        print("| row | copies | least, copies alone | measured |")
        print("|:--|:--|--:|--:|")
        for row, copies in ROWS.items():
            least = sum(found[label][kind] * count for kind, count in copies)
            what = " + ".join(f"{count} × {kind}" for kind, count in copies)
            got = measured.get(row, "") if label == "1 MiB" else ""
            print(f"| {row} | {what} | {least:,.1f} | {got} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
