"""Locate a service across hosts: the bridges that export it (paper §3.2: "clients may multicast to
locate a server" on a well-known channel).

``locate("calc")`` asks this host's bridge, which sends a LOCATE for the service's well-known
channel (``rpc-calc``) to its multicast group (``ombm bridge --multicast GROUP:PORT``) and to its
``--peer`` bridges; every bridge that exports the channel (``--service calc``) and has it now (its
server runs) answers with its unicast address. The answers gathered within the timeout are the
remote names a client connects to (:func:`ombm.rpc.connect`). docs/net.md, *Locating a service*.
"""

from __future__ import annotations

from ombm.core import remote
from ombm.rpc.slots import well_known_name

__all__ = ["locate"]


def locate(name: str, timeout: float = 1.0) -> list[str]:
    """The remote names (``["calc@IP:PORT", ...]``, sorted) of the service ``name`` on every bridge
    that exports it and answered within ``timeout`` seconds (0.1 to 60); ``[]`` if none did. It
    always takes ``timeout``: answers are gathered until then.

    :class:`~ombm.BridgeNotRunningError` if no bridge runs on this host; ``ValueError`` for a bad
    name or timeout. A service on this host is not listed: connect to it by its plain name."""
    channel = well_known_name(name)
    return [f"{name}@{where}" for where in remote.locate_segment(channel, timeout)]
