"""Hosts on one machine: Linux network namespaces joined by veth pairs (issue 12).

Owns the "hosts" that ``ombm bench net`` and the tests in ``tests/net/`` run ombm across: each is
a network namespace of its own, with its loopback up, one interface ``veth0`` and an address in
``10.231.0.0/24`` (host *i* is ``10.231.0.<i+1>``), a route for IP multicast (``224.0.0.0/4``
on ``veth0``), and a folder of its own for ombm's shared objects: network namespaces do not
separate ``/dev/shm``, so every host gets ``OMBM_SHM_DIR`` = a fresh folder under ``/dev/shm``,
and ombm keeps that host's objects in ``<folder>/ombm-<uid>``.

Topology (:meth:`Network.create`): two hosts are joined by one veth pair, ``veth0`` to
``veth0``; three or more by a switch: a namespace ``<run>-sw`` holding a bridge ``br0``
(multicast snooping off, so a group reaches every port) with a veth pair to each host. Nothing
is created in the machine's own namespace, so the range cannot clash with its networks, and
runs going on at the same time cannot see each other.

Rules:

- Names are ``ombm-<tag><pid>-<label>``: the tag says who made them (``t`` tests, ``b`` the
  benchmark), the pid which process. :func:`sweep` removes what a run whose process has died
  left behind (a killed pytest): namespaces, the processes in them, and the host folders.
- Every process a host starts (``run``, ``popen``, ``python``) runs as ``ip netns exec <ns> ...``
  with that host's ``OMBM_SHM_DIR`` and ``PYTHONPATH`` naming the ombm in use, and is recorded.
  :meth:`Network.close` (idempotent, also run at exit) kills every process inside each
  namespace and every recorded one, reaps them, deletes the namespaces (their veths go with
  them) and removes the folders. A half-built network is closed the same way.
- :meth:`Host.entered` moves the calling *thread* into a host (``setns``): a socket made there
  stays there, and a child process started there starts there. The environment is not changed.
- Loss: :meth:`Host.drop_percent` installs an nftables rule ``numgen random mod 100 < n drop``
  on the host's UDP input, with a counter (:meth:`Host.dropped`). The kernel here has no netem.

Everything needs root (``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN``) and ``ip`` (iproute2); loss
needs ``nft`` (nftables). :func:`missing` says what is not there.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import ombm

SUBNET = "10.231.0"  # host i has SUBNET.<i+1>/24
MULTICAST_ROUTE = "224.0.0.0/4"
INTERFACE = "veth0"
SHM_ROOT = "/dev/shm"
NETNS_DIR = "/run/netns"
LOSS_TABLE = "ombm_loss"
SRC = os.path.dirname(os.path.dirname(ombm.__file__))  # where the ombm in use lives (installed or src/)
_NAME = re.compile(r"ombm-([a-z])(\d+)-")
_CLONE_NEWNET = 0x40000000
_COMMAND_TIMEOUT_S = 30.0
_REAP_TIMEOUT_S = 10.0
_READY_TIMEOUT_S = 30.0  # links up after creation (the kernel's link-watch work)


def missing() -> str | None:
    """Why hosts cannot be made here (not root, no ``ip``), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip args...`` in this process's namespace; raise with its message if it fails."""
    return _command(["ip", *args], check=check)


def _command(argv: Sequence[str], check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    if check and result.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def enter(netns: str) -> None:
    """Move the calling thread into the network namespace named ``netns`` for good."""
    fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)


class Host:
    """One namespace of a :class:`Network`: its name, address, ombm folder and processes."""

    def __init__(self, netns: str, label: str, address: str, shm_dir: str) -> None:
        self.netns = netns
        self.label = label
        self.address = address
        self.shm_dir = shm_dir
        self.processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Host({self.label!r}, {self.netns}, {self.address})"

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment with the host's ``OMBM_SHM_DIR`` and ombm on ``PYTHONPATH``."""
        env = dict(os.environ)
        env["OMBM_SHM_DIR"] = self.shm_dir
        env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH", "")) if p)
        env.update(extra or {})
        return env

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as a command run inside this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def popen(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside this host (``subprocess.Popen`` keywords allowed); it is recorded
        and killed when the network closes."""
        process = subprocess.Popen(self.command(argv), env=self.environment(env), **kwargs)
        self.processes.append(process)
        return process

    def run(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 60.0,
        input: str | None = None, check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this host to its end; its output captured as text."""
        process = self.popen(argv, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        if check:
            result.check_returncode()
        return result

    def python(
        self, code: str, *, env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -c code`` inside this host (ombm importable, the host's folder)."""
        return self.run([sys.executable, "-c", code], env=env, timeout=timeout)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the calling thread inside this host for the ``with`` block, then back where it was."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            enter(self.netns)
            try:
                yield
            finally:
                _setns(back)
        finally:
            os.close(back)

    # --- loss by nftables

    def drop_percent(self, percent: int, interface: str | None = None) -> None:
        """Drop ``percent`` % of the UDP datagrams this host receives (only those arriving on
        ``interface``, e.g. ``"veth0"``, if given), at random (nftables ``numgen random mod 100 <
        percent``), counted; 0 removes the rule."""
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be 0..100, not {percent}")
        if shutil.which("nft") is None:
            raise FileNotFoundError("the nft command (nftables) is not installed: apt-get install nftables")
        script = f"table inet {LOSS_TABLE}\ndelete table inet {LOSS_TABLE}\n"
        if percent:
            script += (f"table inet {LOSS_TABLE} {{\n chain input {{\n"
                       "  type filter hook input priority 0; policy accept;\n"
                       f"  {'' if interface is None else f'iifname {json.dumps(interface)} '}"
                       f"meta l4proto udp numgen random mod 100 < {percent} counter drop\n }}\n}}\n")
        _command(self.command(["nft", "-f", "-"]), stdin=script)

    def dropped(self) -> int:
        """Datagrams the loss rule has dropped so far (0 without a rule)."""
        result = _command(self.command(["nft", "-j", "list", "table", "inet", LOSS_TABLE]), check=False)
        if result.returncode != 0:
            return 0
        return sum(part["counter"]["packets"]
                   for item in json.loads(result.stdout)["nftables"] if "rule" in item
                   for part in item["rule"]["expr"] if "counter" in part)

    # --- teardown

    def pids(self) -> list[int]:
        """Every process inside this host's namespace now."""
        result = ip("netns", "pids", self.netns, check=False)
        return [int(p) for p in result.stdout.split()]

    def kill_all(self) -> None:
        """Kill every process inside the namespace and every one this host started; reap them."""
        for _ in range(50):  # a process may fork while we look: until the namespace is empty
            inside = self.pids()
            if not inside:
                break
            for pid in inside:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        for process in self.processes:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    process.kill()
        for process in self.processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(_REAP_TIMEOUT_S)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


class Network:
    """Hosts joined by veth pairs (two) or a bridge in a switch namespace (three or more).

    ``with Network.create(2, tag="t") as net: a, b = net`` — :meth:`close` undoes everything.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # of every name: ombm-<tag><pid>
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []  # every namespace made, the switch too
        self.folders: list[str] = []
        self._closed = False
        atexit.register(self.close)

    @classmethod
    def create(cls, count: int = 2, tag: str = "t") -> Network:
        """``count`` (2..9) fresh hosts ``a``, ``b``, … named ``ombm-<tag><pid>-<label>``."""
        if not 2 <= count <= 9:
            raise ValueError(f"count must be 2..9, not {count}")
        if not re.fullmatch(r"[a-z]", tag):
            raise ValueError(f"tag must be one lower-case letter, not {tag!r}")
        reason = missing()
        if reason:
            raise PermissionError(reason)
        network = cls(f"ombm-{tag}{os.getpid()}")
        try:
            network._build(count)
        except BaseException:
            network.close()
            raise
        return network

    def _build(self, count: int) -> None:
        for index in range(count):
            label = "abcdefghi"[index]
            netns = self._namespace(label)
            folder = tempfile.mkdtemp(prefix=f"{netns}-", dir=SHM_ROOT)
            self.folders.append(folder)
            self.hosts.append(Host(netns, label, f"{SUBNET}.{index + 1}", folder))
        if count == 2:
            a, b = self.hosts
            ip("link", "add", INTERFACE, "netns", a.netns, "type", "veth", "peer", "name", INTERFACE, "netns", b.netns)
        else:
            switch = self._namespace("sw")
            ip("-n", switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
            for host in self.hosts:
                port = f"p{host.label}"
                ip("link", "add", port, "netns", switch, "type", "veth", "peer", "name", INTERFACE, "netns", host.netns)
                ip("-n", switch, "link", "set", port, "master", "br0", "up")
            ip("-n", switch, "link", "set", "br0", "up")
        for host in self.hosts:
            ip("-n", host.netns, "link", "set", "lo", "up")
            ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", INTERFACE)
            ip("-n", host.netns, "link", "set", INTERFACE, "up")
            ip("-n", host.netns, "route", "add", MULTICAST_ROUTE, "dev", INTERFACE)
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        """Wait until every link carries traffic. The kernel turns a veth's carrier on, attaches
        its queue and lets a bridge port forward in its link-watch work, which runs up to a
        second later: a datagram sent before that is lost."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            waiting = [f"{netns}/{link['ifname']}" for netns in self.namespaces
                       for link in json.loads(ip("-n", netns, "-j", "-d", "link", "show").stdout)
                       if link["ifname"] != "lo" and not _carries(link)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"links not up after {_READY_TIMEOUT_S:.0f} s: {', '.join(waiting)}")
            time.sleep(0.01)

    def _namespace(self, label: str) -> str:
        netns = f"{self.prefix}-{label}"
        ip("netns", "add", netns)
        self.namespaces.append(netns)
        return netns

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __getitem__(self, index: int) -> Host:
        return self.hosts[index]

    def __len__(self) -> int:
        return len(self.hosts)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process in the hosts, delete the namespaces, remove the folders. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            for host in self.hosts:
                host.kill_all()
        finally:
            _remove(self.namespaces, self.folders)


def _carries(link: dict[str, Any]) -> bool:
    """An interface (``ip -j -d link`` record) is up, has its queue, and forwards if a bridge port."""
    port = link.get("linkinfo", {}).get("info_slave_data", {})
    return (link.get("operstate") == "UP" and link.get("qdisc") != "noop"
            and port.get("state", "forwarding") == "forwarding")


def _remove(namespaces: Sequence[str], folders: Sequence[str]) -> None:
    """Delete the namespaces (killing whatever still runs inside) and the folders."""
    for netns in namespaces:
        leftover = Host(netns, "", "", "")
        leftover.kill_all()
        ip("netns", "del", netns, check=False)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[str]:
    """Remove the namespaces and host folders of runs whose process has died; what was removed."""
    namespaces = sorted(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else []
    folders = sorted(os.listdir(SHM_ROOT)) if os.path.isdir(SHM_ROOT) else []

    def stale(name: str) -> bool:
        match = _NAME.match(name)
        return match is not None and not _pid_alive(int(match.group(2)))

    dead_namespaces = [n for n in namespaces if stale(n)]
    dead_folders = [os.path.join(SHM_ROOT, f) for f in folders
                    if stale(f) and os.path.isdir(os.path.join(SHM_ROOT, f))]
    _remove(dead_namespaces, dead_folders)
    return dead_namespaces + dead_folders
