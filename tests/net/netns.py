"""Helpers of the tests across hosts: network namespaces as hosts, sockets inside them.

The hosts themselves are :mod:`ombm.cli.bench.netns` (``Network``, ``Host``), shared with
``ombm bench net``: two hosts joined by one veth pair, three or more by a bridge in a switch
namespace, each with loopback, an address in ``10.231.0.0/24``, a multicast route, its own
``OMBM_SHM_DIR`` folder, ``run``/``popen``/``python`` inside it, ``entered()`` (this thread
inside it), ``drop_percent(n)``/``dropped()`` (loss by nftables). ``tests/net/conftest.py``
gives them to a test as the ``hosts`` fixture; the impairment relay is ``impair.py``.
"""

from __future__ import annotations

import shutil
import socket

import pytest

from ombm.cli.bench.netns import SUBNET, Host, Network, missing, sweep

__all__ = ["SUBNET", "Host", "Network", "missing", "sweep", "need_nft", "udp_socket", "receive"]

BUFFER_BYTES = 16 << 20  # receive buffers of the test sockets: a burst must not overflow them
_SO_RCVBUFFORCE = 33


def need_nft() -> None:
    """Skip the test when nftables is missing (``.ci/run`` installs it)."""
    if shutil.which("nft") is None:
        pytest.skip("nft (nftables) is not installed; .ci/run installs it")


def udp_socket(host: Host, port: int = 0, timeout_s: float = 10.0) -> socket.socket:
    """A UDP socket made inside ``host``, bound to ``0.0.0.0:port``, with a large receive buffer
    and a receive timeout (a failure bound, never an assertion on time)."""
    with host.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, BUFFER_BYTES)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(timeout_s)
    return sock


def receive(sock: socket.socket, count: int) -> list[bytes]:
    """Exactly ``count`` datagrams from ``sock`` (its timeout bounds each wait)."""
    return [sock.recv(65535) for _ in range(count)]
