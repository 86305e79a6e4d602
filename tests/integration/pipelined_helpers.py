"""The pipelined lane under faults: seeded streams of calls kept outstanding from one connection,
the child body that runs them (tests/integration/test_rpc_pipelined_lane.py). It lives here so that
spawn children can import it; the service and the faults are lanes_helpers'.
"""

from __future__ import annotations

import collections
import os
import random

import ombm
from lanes_helpers import KEY_CLIENT, Op, _call, _settled, blob_of
from rpc_helpers import child


def stream(seed: int, client: int, calls: int) -> list[tuple[Op, int]]:
    """Client ``client``'s stream: each call with the number of calls to keep outstanding once it
    is made (1 to 40: the window is 16, so calls also wait behind it). Mostly call_async's null-ish
    calls; a few carry a blob (up to two frames), take longer than the RTO (retransmitted and
    taken back by the protocol), raise, or are synchronous calls in between (the protocol takes
    the pipelined calls back first)."""
    rng = random.Random(f"pipelined-{seed}-{client}")
    ops = []
    depth = 32
    for i in range(calls):
        if rng.random() < 0.05:
            depth = rng.choice([1, 4, 16, 17, 32, 40])
        kind = rng.choices(["async", "sync"], [95, 5])[0]
        size = rng.choices([0, rng.randrange(1, 3000), 150_000], [94, 5, 1])[0]  # 150 KB: two frames
        pause_s = rng.choices([0.0, 0.008], [99, 1])[0]
        ops.append((Op(kind, client * KEY_CLIENT + i, rng.randrange(1 << 20), size, pause_s), depth))
    return ops


@child
def run_stream(conn, name: str, seed: int, client: int, calls: int) -> None:
    """Run client ``client``'s stream on one connection; report every result and the connection's
    final state."""
    results: dict = {}
    with ombm.rpc.connect(name, timeout=60.0) as cli:
        conn.send(("ready", os.getpid()))
        outstanding: collections.deque = collections.deque()
        for op, depth in stream(seed, client, calls):
            blob = blob_of(op.key, op.size)
            if op.kind == "sync":
                results[op.key] = _call(lambda: cli.apply(op.key, op.x, blob, op.pause_s))
                continue
            outstanding.append((op.key, cli.call_async("apply", op.key, op.x, blob, op.pause_s)))
            while len(outstanding) >= depth:
                key, future = outstanding.popleft()
                results[key] = _call(future.result)
        for key, future in outstanding:
            results[key] = _call(future.result)
        state = _settled(cli)
    conn.send(("result", {"results": results, "connection": state, "ombm": ombm.stats()}))
