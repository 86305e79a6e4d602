"""The floors under every round trip: how fast two processes can pass one cache line (issue 13).

Owns two measurements that no messaging system can beat on this machine, taken in the same
sitting as the rows they are compared with:

- **C cache-line ping-pong**: a C program (``PINGPONG_C``, built at run time with the system's
  ``cc``; skipped with the reason if there is none) forks; the two processes, pinned to the
  placement's two CPUs, pass one 64-bit word in one cache line back and forth (odd: the parent's
  turn is over, even: the child's). The hardware's floor.
- **Python shared-memory spin**: the same protocol between this process and a spawned child
  spinning on a word of a shared ``mmap`` through ``memoryview.cast("Q")``: the best a pure-Python
  waiter can do, and so the floor for an ombm call, whose both ends run Python.

On one CPU a pure spin would burn its whole time slice before the other side runs, so *yield*
variants call ``sched_yield`` in every empty poll. Both count their round trips on each side
and raise if the counts differ from what was asked. Latencies are batch means (a clock reading
costs about a round trip of the C floor): ``round_trips`` split into batches of ``batch``, each
batch's time / ``batch``.
"""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from ombm.cli.bench import core
from ombm.cli.bench.affinity import pinned
from ombm.cli.bench.report import Latency

STOP = (1 << 64) - 1  # odd, so the waiting child sees it; never a turn
_CHILD_COUNT = 8  # word index (byte offset 64, its own cache line) of the child's round-trip count
_BUILD_TIMEOUT_S = 60.0

PINGPONG_C = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STOP UINT64_MAX

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set)) { perror("sched_setaffinity"); exit(2); }
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* usage: pingpong PARENT_CPU CHILD_CPU WARMUP ROUND_TRIPS BATCH YIELD
   prints "parent N", "child N", then one line per batch: its mean ns per round trip */
int main(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: %s cpu cpu warmup round_trips batch yield\n", argv[0]); return 2; }
    int parent_cpu = atoi(argv[1]), child_cpu = atoi(argv[2]), yield = atoi(argv[6]);
    long warmup = atol(argv[3]), round_trips = atol(argv[4]), batch = atol(argv[5]);
    if (warmup < 0 || round_trips < 1 || batch < 1) { fprintf(stderr, "bad counts\n"); return 2; }
    uint64_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) { perror("mmap"); return 2; }
    uint64_t *word = shared, *child_count = shared + 8; /* two cache lines */
    alarm(120);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 2; }
    if (pid == 0) {
        pin(child_cpu);
        uint64_t count = 0, v;
        for (;;) {
            while (!((v = __atomic_load_n(word, __ATOMIC_ACQUIRE)) & 1))
                if (yield) sched_yield();
            if (v == STOP) break;
            count++;
            __atomic_store_n(word, v + 1, __ATOMIC_RELEASE);
        }
        __atomic_store_n(child_count, count, __ATOMIC_RELEASE);
        _exit(0);
    }
    pin(parent_cpu);
    long batches = round_trips / batch, done = 0;
    uint64_t v = 0;
    uint64_t *means = calloc((size_t)batches + 1, sizeof *means);
    for (long i = 0; i < warmup; i++, done++) {
        __atomic_store_n(word, v + 1, __ATOMIC_RELEASE);
        while (__atomic_load_n(word, __ATOMIC_ACQUIRE) != v + 2)
            if (yield) sched_yield();
        v += 2;
    }
    for (long b = 0; b < batches; b++) {
        uint64_t start = now_ns();
        for (long i = 0; i < batch; i++, done++) {
            __atomic_store_n(word, v + 1, __ATOMIC_RELEASE);
            while (__atomic_load_n(word, __ATOMIC_ACQUIRE) != v + 2)
                if (yield) sched_yield();
            v += 2;
        }
        means[b] = (now_ns() - start) / (uint64_t)batch;
    }
    __atomic_store_n(word, STOP, __ATOMIC_RELEASE);
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
        fprintf(stderr, "the child failed\n");
        return 1;
    }
    printf("parent %ld\nchild %llu\n", done, (unsigned long long)__atomic_load_n(child_count, __ATOMIC_ACQUIRE));
    for (long b = 0; b < batches; b++) printf("%llu\n", (unsigned long long)means[b]);
    return 0;
}
"""


@dataclass(frozen=True)
class Floor:
    """One floor measurement: batch-mean round trips in µs, and both sides' counts."""

    latency: Latency
    parent_round_trips: int
    child_round_trips: int


def compiler() -> str | None:
    """The C compiler to build the ping-pong with, or None."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def c_unavailable() -> str | None:
    """Why the C floor cannot run here, or None."""
    return None if compiler() else "no C compiler (cc, gcc or clang) on PATH"


def build(directory: str) -> str:
    """Compile ``PINGPONG_C`` into ``directory``; the executable's path."""
    cc = compiler()
    if cc is None:
        raise RuntimeError(c_unavailable())
    source, binary = os.path.join(directory, "pingpong.c"), os.path.join(directory, "pingpong")
    with open(source, "w", encoding="utf-8") as out:
        out.write(PINGPONG_C)
    done = subprocess.run([cc, "-O2", "-o", binary, source], capture_output=True, text=True,
                          timeout=_BUILD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{cc} failed: {done.stderr.strip()[:500]}")
    return binary


def c_pingpong(placement: tuple[int, int], round_trips: int, warmup: int = 10_000, batch: int = 1_000,
               yield_cpu: bool = False) -> Floor:
    """Build and run the C ping-pong, parent on ``placement[0]``, child on ``placement[1]``."""
    batch = max(1, min(batch, round_trips))
    with tempfile.TemporaryDirectory(prefix="ombm-floor-") as directory:
        binary = build(directory)
        args = [binary, str(placement[0]), str(placement[1]), str(warmup), str(round_trips), str(batch),
                str(int(yield_cpu))]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"the C ping-pong failed ({done.returncode}): {done.stderr.strip()[:500]}")
    lines = done.stdout.split()
    parent, child = int(lines[1]), int(lines[3])
    means_us = [int(ns) / 1000 for ns in lines[4:]]
    return _checked(Floor(Latency.of(means_us), parent, child), warmup + round_trips - round_trips % batch, "C")


def _checked(floor: Floor, expected: int, what: str) -> Floor:
    if floor.parent_round_trips != expected or floor.child_round_trips != expected:
        raise RuntimeError(f"{what} ping-pong: {floor.parent_round_trips} round trips sent, "
                           f"{floor.child_round_trips} answered, {expected} asked")
    return floor


# --- the pure-Python spin ---------------------------------------------------------------------------


def _spin_child(control: Connection, path: str, yield_cpu: bool) -> None:
    """Answer every odd word with the next even one until STOP; publish the count."""
    with open(path, "r+b") as file, mmap.mmap(file.fileno(), mmap.PAGESIZE) as shared:
        words = memoryview(shared).cast("Q")
        try:
            control.send(("ready",))
            count, pause = 0, os.sched_yield
            while True:
                value = words[0]
                while not value & 1:
                    if yield_cpu:
                        pause()
                    value = words[0]
                if value == STOP:
                    break
                count += 1
                words[0] = value + 1
            words[_CHILD_COUNT] = count
        finally:
            words.release()


def python_spin(placement: tuple[int, int], round_trips: int, warmup: int = 2_000, batch: int = 100,
                yield_cpu: bool = False) -> Floor:
    """The pure-Python shared-memory spin: this process on ``placement[0]``, a child on ``placement[1]``."""
    batch = max(1, min(batch, round_trips))
    batches = round_trips // batch
    with tempfile.TemporaryDirectory(prefix="ombm-floor-") as directory:
        path = os.path.join(directory, "line")
        with open(path, "wb") as new:
            new.truncate(mmap.PAGESIZE)
        with open(path, "r+b") as file, mmap.mmap(file.fileno(), mmap.PAGESIZE) as shared:
            words = memoryview(shared).cast("Q")
            try:
                lifetime = 30 + (warmup + round_trips) * 0.001
                with core.child(_spin_child, path, yield_cpu, cpu=placement[1], lifetime_s=lifetime) as (process, _):
                    with pinned(placement[0]):
                        means_us, value = _spin(words, warmup, batches, batch, yield_cpu)
                    words[0] = STOP
                    process.join(10.0)
                child = words[_CHILD_COUNT]
            finally:
                words.release()
    done = warmup + batches * batch
    return _checked(Floor(Latency.of(means_us), value // 2, child), done, "Python")


def _spin(words: memoryview, warmup: int, batches: int, batch: int, yield_cpu: bool) -> tuple[list[float], int]:
    """Run the parent's side: ``warmup`` round trips, then ``batches`` timed batches."""
    clock, pause, value, means_us = time.perf_counter_ns, os.sched_yield, 0, []
    for timed_batch in [False] * (1 if warmup else 0) + [True] * batches:
        count = batch if timed_batch else warmup
        start = clock()
        for _ in range(count):
            words[0] = value + 1
            value += 2
            while words[0] != value:
                if yield_cpu:
                    pause()
        if timed_batch:
            means_us.append((clock() - start) / count / 1000)
    return means_us, value


def run_floors(placement: tuple[int, int], round_trips: int, yield_cpu: bool) -> dict[str, Floor | str]:
    """Both floors on ``placement``: name -> Floor, or why it was not measured."""
    found: dict[str, Floor | str] = {}
    suffix = " + sched_yield" if yield_cpu else ""
    for name, measure in ((f"floor: C cache-line ping-pong{suffix}", c_pingpong),
                          (f"floor: Python shm spin{suffix}", python_spin)):
        reason = c_unavailable() if measure is c_pingpong else None
        if reason:
            found[name] = reason
            continue
        try:
            found[name] = measure(placement, round_trips, yield_cpu=yield_cpu)
        except Exception as exc:  # reported, never given a number
            found[name] = f"failed: {type(exc).__name__}: {exc}"
    return found
