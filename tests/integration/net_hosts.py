"""Hosts on one machine for the bridge's tests: each host is its own ``OMBM_SHM_DIR`` (a folder under
/dev/shm), so two hosts share no ombm object, and its processes are a bridge (``ombm bridge``) and
*agents*: Python processes that create, open, watch, write and read segments when told (one JSON
line in, one JSON line out). Every process is killed and the folder removed by :meth:`Host.close`.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import ombm
from rpc_net_agents import AGENT_LOOP, RPC_AGENT, RPC_SERVER

SRC = os.path.dirname(os.path.dirname(ombm.__file__))
ANSWER_S = 30.0

AGENT = r"""
import json, sys, time
import ombm
from ombm.core import remote

segments, regions, got = {}, {}, []

def on_signal(address):
    for name, region in regions.items():
        if region.address <= address < region.address + region.size:
            offset = address - region.address
            unit = region.segment.unit
            got.append({"name": name, "address": address, "base": region.address, "offset": offset,
                        "data": bytes(region.buffer[offset:offset + unit]).hex()})

def hold(name, seg):
    segments[name] = seg
    regions[name] = seg.bind()
    return {"local": seg.name, "size": seg.size, "unit": seg.unit}

def serve(cmd):
    op = cmd["op"]
    if op == "create":
        return hold(cmd["name"], ombm.create_segment(cmd["size"], name=cmd["name"], unit=cmd["unit"]))
    if op == "open":
        return hold(cmd["name"], ombm.open_segment(cmd["name"]))
    if op == "watch":
        region = regions[cmd["name"]]
        ombm.signal_handler(region.address, region.size, on_signal)
        return {}
    if op == "write":
        regions[cmd["name"]].write(cmd["offset"], bytes.fromhex(cmd["hex"]))
        return {}
    if op == "read":
        return {"hex": regions[cmd["name"]].read(cmd["offset"], cmd["n"]).hex()}
    if op == "wait":
        deadline = time.monotonic() + cmd["timeout"]
        while len(got) < cmd["n"] and time.monotonic() < deadline:
            ombm.sig_wait(0.05)
        return {"signals": got[:]}
    if op == "offer":
        return {"remote": remote.offer_segment(cmd["name"], cmd["bridge"])}
    if op == "status":
        return remote.raise_for(remote.request({"op": "status"}, 5.0))
    raise ValueError(op)

""" + AGENT_LOOP + r"""
for region in regions.values():
    region.unbind()
for seg in segments.values():
    seg.release()
"""


def wait_for(predicate, timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` until true (True) or ``timeout_s`` passed (False): a bound on a failure only."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise TimeoutError(f"no answer from {proc.args!r} within {timeout_s} s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{proc.args!r} ended (status {proc.wait(5)}): {err}")
    return line


class Agent:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        assert json.loads(_read_line(proc, ANSWER_S))["ready"]

    def __call__(self, op: str, **fields: object) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        return json.loads(_read_line(self.proc, ANSWER_S + float(fields.get("timeout", 0))))  # type: ignore[arg-type]

    def ok(self, op: str, **fields: object) -> dict:
        answer = self(op, **fields)
        assert answer["ok"], answer
        return answer

    def exit(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(ANSWER_S)


class BridgeProcess:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        line = _read_line(proc, ANSWER_S)
        assert line.startswith("ombm bridge: listening on "), line
        self.port = int(line.split()[4].rstrip(";").rpartition(":")[2])

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send ``sig`` and wait: (exit status, what it printed after its first line)."""
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=ANSWER_S)
        return self.proc.returncode, out


class Host:
    """One "host": a private OMBM_SHM_DIR and the processes started in it."""

    def __init__(self, label: str) -> None:
        self.root = tempfile.mkdtemp(prefix=f"ombmtest-net-{label}-", dir="/dev/shm")
        self.folder = os.path.join(self.root, f"ombm-{os.getuid()}")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OMBM_")}
        self.env.update(OMBM_SHM_DIR=self.root, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.procs: list[subprocess.Popen] = []

    def _start(self, args: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, *args], env=self.env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, **kwargs)
        self.procs.append(proc)
        return proc

    def ombm(self, *args: str, timeout_s: float = ANSWER_S) -> subprocess.CompletedProcess:
        """Run ``ombm ARGS`` on this host to its end."""
        code = "import sys; from ombm.cli.main import main; sys.exit(main(sys.argv[1:]))"
        return subprocess.run([sys.executable, "-c", code, *args], env=self.env, text=True, capture_output=True,
                              timeout=timeout_s)

    def bridge(self, *args: str) -> BridgeProcess:
        code = "import sys; from ombm.cli.main import main; sys.exit(main(sys.argv[1:]))"
        return BridgeProcess(self._start(["-c", code, "bridge", *args]))

    def agent(self) -> Agent:
        return Agent(self._start(["-c", AGENT], stdin=subprocess.PIPE))

    def objects(self) -> list[str]:
        try:
            return sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return []

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.communicate(timeout=ANSWER_S)
            except (subprocess.TimeoutExpired, ValueError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def key_file(folder: str, key: bytes, mode: int = 0o600) -> str:
    path = os.path.join(folder, f"key-{time.monotonic_ns()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with open(fd, "w") as f:
        f.write(key.hex() + "\n")
    os.chmod(path, mode)
    return path


def rpc_server(host: Host, service: str = "calc") -> Agent:
    """An RPC server process on ``host`` serving ``service`` (a Calc with a non-idempotent ``bump``)."""
    return Agent(host._start(["-c", RPC_SERVER, service], stdin=subprocess.PIPE))


def rpc_agent(host: Host) -> Agent:
    """A process on ``host`` that connects and calls when told."""
    return Agent(host._start(["-c", RPC_AGENT], stdin=subprocess.PIPE))
