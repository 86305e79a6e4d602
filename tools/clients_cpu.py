"""Where the CPU goes with many synchronous clients (issue 13 item 1), ombm builds side by side in one
sitting: for ``ombm bench load``'s synchronous cell (``--clients`` client processes against one
server, nothing pinned, load.synchronous_load), per call, over the middle 60 % of the clients' window:

- the server's and the clients' (all together) time on a CPU and time runnable but waiting for one
  (``/proc/PID/schedstat``), and their voluntary and involuntary context switches (``/proc/PID/status``);
- their context switches, futex wakes (``FUTEX_WAKE``: a reply or request that found its receiver
  asleep), futex waits (a sleep), ``sched_yield`` calls and the wake-ups they made (``sched_wakeup``), counted by
  ``perf stat --per-thread`` on those processes only;
- the machine's rescheduling and function-call interrupts (``perf stat -a``: other work counts too).

Each build is ``name=interpreter`` (an interpreter, or a wrapper script that sets PYTHONPATH to a
worktree's ``src``); the builds run in turn, a fresh process per run, the order rotated every round.
Needs root (perf, tracepoints).

    python3 tools/clients_cpu.py 2 main=/tmp/py-a branch=/tmp/py-b --clients 16

The figures are ratios of one sitting: say what the machine's load was (printed per run).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from clients_ab import json_run

ONE_RUN = r"""
import json, subprocess, sys, threading, time
from ombm.cli.bench import core, load

EVENTS = ["-e", "context-switches", "-e", "syscalls:sys_enter_futex", "--filter", "op == 1",
          "-e", "syscalls:sys_enter_futex", "--filter", "op == 0", "-e", "syscalls:sys_enter_sched_yield",
          "-e", "sched:sched_wakeup"]
NAMES = ["switches", "futex wakes", "futex waits", "yields", "wake-ups made"]

def snapshot(pid):
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    run_ns, wait_ns = open(f"/proc/{pid}/schedstat").read().split()[:2]
    return {"run": int(run_ns), "wait": int(wait_ns), "voluntary": int(status["voluntary_ctxt_switches"]),
            "involuntary": int(status["nonvoluntary_ctxt_switches"])}

def main():
    n, duration = int(sys.argv[1]), float(sys.argv[2])
    pids, found, readies = [], {}, []
    real_start, real_expect = core.start_child, load.expect

    def start_child(*args, **kwargs):  # the server is started first, then the clients
        process, control = real_start(*args, **kwargs)
        pids.append(process.pid)
        return process, control

    def probe():
        time.sleep(duration * 0.2)
        window = duration * 0.6
        before = {p: snapshot(p) for p in pids}
        perf = subprocess.Popen(["perf", "stat", "-x", ",", "--per-thread", "-p", ",".join(map(str, pids)), *EVENTS,
                                 "sleep", str(window)], stderr=subprocess.PIPE, text=True)
        ipi = subprocess.Popen(["perf", "stat", "-x", ",", "-a", "-e", "irq_vectors:reschedule_entry", "-e",
                                "irq_vectors:call_function_single_entry", "sleep", str(window)],
                               stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        found["perf"] = perf.communicate(timeout=60)[1]
        found["after"] = {p: snapshot(p) for p in pids}
        found["window"], found["before"] = time.monotonic() - t0, before
        found["ipi"] = ipi.communicate(timeout=60)[1]

    def expect(control, what, *args):
        got = real_expect(control, what, *args)
        if what == "ready":
            readies.append(1)
            if len(readies) == n:  # every client is ready: the parent opens the barrier next
                found["thread"] = threading.Thread(target=probe)
                found["thread"].start()
        return got

    core.start_child, load.expect = start_child, expect
    cell = load.synchronous_load(load._Ombm, n, load.Plan((n,), (load.SYNC,), duration, 200))
    found["thread"].join(120)
    calls = cell.rate * found["window"]
    server, clients = pids[0], pids[1:]
    per = {}
    for line in found["perf"].splitlines():
        parts = line.split(",")
        if len(parts) > 3 and parts[1].strip().isdigit():
            per.setdefault(int(parts[0].rsplit("-", 1)[1]), []).append(int(parts[1]))
    out = {"k calls/s": cell.rate / 1e3}
    for who, group in (("server", [server]), ("clients", clients)):
        def delta(key):
            return sum(found["after"][p][key] - found["before"][p][key] for p in group)
        out[f"{who}: on a CPU, us"] = delta("run") / 1e3 / calls
        out[f"{who}: runnable, waiting for a CPU, us"] = delta("wait") / 1e3 / calls
        out[f"{who}: voluntary switches"] = delta("voluntary") / calls
        out[f"{who}: involuntary switches"] = delta("involuntary") / calls
        for i, name in enumerate(NAMES):
            out[f"{who}: {name}"] = sum(counts[i] for tid, counts in per.items() if tid in group) / calls
    ipis = [int(line.split(",")[0]) for line in found["ipi"].splitlines() if line.split(",")[0].strip().isdigit()]
    out["machine: rescheduling IPIs"], out["machine: function-call IPIs"] = ipis[0] / calls, ipis[1] / calls
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rounds", type=int)
    parser.add_argument("builds", nargs="+", help="name=interpreter")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=3.0, help="each client's window, s")
    opts = parser.parse_args()
    builds = [tuple(b.split("=", 1)) for b in opts.builds]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in builds}
    for r in range(opts.rounds):
        shift = r % len(builds)
        for name, python in builds[shift:] + builds[:shift]:
            load = " ".join(open("/proc/loadavg").read().split()[:4])
            found = json_run(python, ONE_RUN, str(opts.clients), str(opts.duration), timeout=600)
            if found is None:
                continue
            results[name].append(found)
            print(f"round {r + 1} {name} (load {load}): {found['k calls/s']:,.1f} k calls/s", flush=True)
    runs = next((r for r in results.values() if r), None)
    if runs is None:
        print("no run: no table")
        return 1
    print(f"\n| {opts.clients} clients, per call, median of the runs | " + " | ".join(n for n, _ in builds) + " |")
    print("|---" * (len(builds) + 1) + "|")
    for key in runs[0]:
        cells = [f"{statistics.median(run[key] for run in results[name]):.3f}" if results[name] else "—"
                 for name, _ in builds]
        print(f"| {key} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
