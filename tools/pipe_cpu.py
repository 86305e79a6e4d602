"""A/B of one client's pipelined calls and the CPU each side spends per call (issue 13, item 2).

Each build is an interpreter with its own ombm (see tools/pipe_ab.py). The builds run alternately,
``--rounds`` times each, every run a fresh process: a server child on CPU 1, the client on CPU 0
making null ``call_async`` calls with 32 outstanding, the oldest collected first (the plain loop,
without ``ombm bench load``'s clock and latency record), then as many synchronous calls. It prints
the calls/s (thousands) of both, their ratio, and the CPU time per pipelined call of the client
(``time.thread_time``) and the server (``/proc/<pid>/stat``, its waits included: a side that
spins while it waits for the other is busy all the time). Medians of the runs are compared.

    python3 tools/pipe_cpu.py /tmp/pyA /tmp/pyB --rounds 5

The figures are ratios of one sitting: say what the machine's load was.
"""

from __future__ import annotations

import sys

from ab import compare

ONE_RUN = r"""
import collections, json, multiprocessing, os, time
import ombm

CALLS, DEPTH = 200_000, 32

class Null:
    def null(self):
        return None

def serve(name, ready):
    os.sched_setaffinity(0, {1})
    server = ombm.rpc.Server(name, Null())
    ready.put(True)
    server.serve_forever()

def pipelined(client, calls):
    outstanding = collections.deque(client.call_async("null") for _ in range(DEPTH))
    for _ in range(calls):
        outstanding.popleft().result()
        outstanding.append(client.call_async("null"))
    while outstanding:
        outstanding.popleft().result()

def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def main():
    name = f"pipe-cpu-{os.getpid()}"
    ready = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(name, ready), daemon=True)
    server.start()
    ready.get(timeout=60)
    os.sched_setaffinity(0, {0})
    client = ombm.rpc.connect(name, wait=5)
    try:
        for _ in range(5000):
            client.call("null")
        pipelined(client, 20_000)
        t0, c0, s0 = time.perf_counter(), time.thread_time(), cpu_s(server.pid)
        pipelined(client, CALLS)
        t1, c1, s1 = time.perf_counter(), time.thread_time(), cpu_s(server.pid)
        for _ in range(CALLS // 4):
            client.call("null")
        t2 = time.perf_counter()
    finally:
        client.close()
        server.terminate()
        server.join(10)
    rate, sync = CALLS / (t1 - t0) / 1000, CALLS // 4 / (t2 - t1) / 1000
    print(json.dumps({"32 outstanding, k calls/s": rate, "sync, k calls/s": sync, "32 outstanding / sync": rate / sync,
                      "client µs per call": 1e6 * (c1 - c0) / CALLS, "server µs per call": 1e6 * (s1 - s0) / CALLS}))

if __name__ == "__main__":
    main()
"""

if __name__ == "__main__":
    sys.exit(compare(__doc__ or "", ONE_RUN, digits=".2f", ratio_digits=".2f"))
