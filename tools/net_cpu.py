"""CPU time per call across hosts: what each of the four processes spends on one RPC call (issue 12).

As root, from the project's root: ``PYTHONPATH=src python3 tools/net_cpu.py [CALLS] [--wait sleep]``.
Sets up what ``ombm bench net`` does (two namespaces, a bridge in each, the echo service in host *b*
on CPU 1, a client in host *a* on CPU 0; ``ombm.cli.bench.net``'s own pieces), makes CALLS 32-byte
calls, and prints the CPU time (user + system, from ``/proc/PID/stat`` and the client's rusage) each
process used per call (user + system), with the call's median round trip. CPU time is what the code costs whatever
else runs on the machine, so two builds compare on a loaded machine where round trips do not; spinning
is CPU time too (``--wait sleep`` sets ``OMBM_WAIT=sleep`` for every process: no spin anywhere).
"""

from __future__ import annotations

import ast
import os
import resource
import statistics
import sys

from ombm.cli.bench import net, netns

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) * TICK_S, int(fields[12]) * TICK_S  # utime, stime: fields 14 and 15 of stat(5)


def sched(pid: int) -> tuple[int, int, int]:
    """Of process ``pid`` so far: sleeps (voluntary context switches), pre-emptions (involuntary
    ones) and ns spent runnable but waiting for a CPU (``/proc/PID/schedstat``'s second field)."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if "ctxt_switches" in line)
    with open(f"/proc/{pid}/schedstat") as f:
        waiting_ns = int(f.read().split()[1])
    return (int(status["voluntary_ctxt_switches"]), int(status["nonvoluntary_ctxt_switches"]), waiting_ns)


def main() -> int:
    args = sys.argv[1:]
    if "--wait" in args:
        at = args.index("--wait")
        os.environ["OMBM_WAIT"] = args[at + 1]
        del args[at:at + 2]
    calls = int(args[0]) if args else 20_000
    plan = net.Plan(calls, 1_000, 0, 1)
    with netns.Network.create(2, tag="c") as hosts:
        a, b = hosts
        load = os.getloadavg()[0]
        for host, other in ((a, b), (b, a)):
            exports = ["--service", net._SERVICE] if host is b else []
            net._start_bridge(host, f"{host.address}:7000", "--insecure", "--peer", f"{other.address}:7000",
                              *exports)
        bridges = {"bridge a": a.processes[0].pid, "bridge b": b.processes[0].pid}
        server = net._OmbmServer(b, 1)
        try:
            pids = {**bridges, "server": server.process.pid}
            before = {name: cpu_s(pid) for name, pid in pids.items()}
            sched_before = {name: sched(pid) for name, pid in pids.items()}
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            samples = net._ombm_calls(a, f"{net._SERVICE}@{b.address}:7000", 32, plan, 0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            used = {name: tuple(t - t0 for t, t0 in zip(cpu_s(pid), before[name])) for name, pid in pids.items()}
            switched = {name: tuple(t - t0 for t, t0 in zip(sched(pid), sched_before[name])) for name, pid in pids.items()}
            stats = {}
            for name, host in (("bridge a", a), ("bridge b", b)):
                status = host.python("import ombm.core.remote as r; print(r.request({'op': 'status'}, 5.0)['stats'])")
                stats[name] = ast.literal_eval(status.stdout.strip())
        finally:
            server.stop()
        used["client"] = (after.ru_utime - children.ru_utime, after.ru_stime - children.ru_stime)
        switched["client"] = (after.ru_nvcsw - children.ru_nvcsw, after.ru_nivcsw - children.ru_nivcsw, 0)
        per_call = {name: [t * 1e6 / (calls + plan.warmup) for t in times] for name, times in used.items()}
        print(f"{calls} calls of 32 B, OMBM_WAIT={os.environ.get('OMBM_WAIT', 'adaptive')}; load average "
              f"{load:.2f} at start, {os.getloadavg()[0]:.2f} at end; median round trip "
              f"{statistics.median(samples):.1f} µs")
        print("CPU µs per call (user + system): " + ", ".join(
            f"{name} {sum(us):.1f} ({us[0]:.1f} + {us[1]:.1f})" for name, us in per_call.items())
              + f"; all four {sum(sum(us) for us in per_call.values()):.1f}")
        n = calls + plan.warmup
        print("per call, sleeps / pre-emptions / µs waiting for a CPU (the client's: not known): " + ", ".join(
            f"{name} {v / n:.2f} / {i / n:.2f} / {w / n / 1e3:.1f}" for name, (v, i, w) in switched.items()))
        for name, counts in stats.items():  # which path the updates took (native_* : BridgeEngine's)
            print(f"{name}: " + ", ".join(f"{k} {counts[k]}" for k in (
                "datagrams_in", "datagrams_out", "updates_in", "updates_out", "native_in", "native_out",
                "native_echoes", "internal_errors", "spins", "spin_wins", "spin_learnt_ns") if k in counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
