"""Remote names, ``name@HOST:PORT``: this host's bridge makes a local replica (paper §3.2.3).

The core knows no network. A remote name is handed to the bridge of this host (``ombm bridge``,
:class:`ombm.net.Bridge`) over a small request/reply protocol on a Unix datagram socket,
``sock-bridge`` in the per-user folder (mode 0700, so only this user's processes reach it; ``ombm
gc`` removes it when no bridge holds it). The bridge imports the segment from the bridge at
HOST:PORT and answers with the name of the local replica, an ordinary segment that
:func:`~ombm.open_segment` then opens.

Requests and replies are msgpack maps; this module owns their fields (the bridge serves them)::

    {"op": "import", "name": N, "host": IP, "port": P, "timeout": S}  -> {"ok": True, "local": NAME}
    {"op": "offer", "name": N, "host": IP, "port": P, "timeout": S}   -> {"ok": True, "remote": NAME}
    {"op": "exports", "host": IP, "port": P}            -> {"ok": True, "names": [N, ...]}
    {"op": "locate", "name": N, "timeout": S}           -> {"ok": True, "found": ["IP:P", ...]} after S
    {"op": "status"}        -> {"ok": True, "stats": {...}, "listen": "IP:P", "mtu": M, "paths": {"IP:P": {...}}}
    any failure                                         -> {"ok": False, "error": KIND, "message": TEXT}

``KIND`` is one of :data:`ERRORS`; :func:`raise_for` turns it into the documented exception.
An *offer* is the other direction: this host's bridge has the bridge at HOST:PORT make a replica of
the local segment N there (the first step of RPC across hosts: a client's own channels, docs/net.md),
and answers with that replica's name on that host. A *locate* asks every bridge in reach (the
multicast group, the peers) which of them export N; the bridge answers when the timeout is over.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket

import msgpack

from ombm.core import namespace
from ombm.core.directory import Directory
from ombm.errors import BridgeError, BridgeNotRunningError, BridgeUnreachableError, SegmentNotFoundError

__all__ = ["CONTROL_SOCKET", "START_HINT", "ERRORS", "REPLICA_MARK", "split_remote", "parse_host_port", "request",
           "import_segment", "offer_segment", "locate_segment", "raise_for", "is_replica_name", "live_peer"]

CONTROL_SOCKET = "sock-bridge"
START_HINT = "ombm bridge --listen 127.0.0.1:PORT --peer HOST:PORT"
MAX_MESSAGE = 65536
REPLICA_MARK = ".at."  # a bridge's replica of ``name`` from the bridge at IP:PORT is ``name.at.IP_PORT``
# error kinds a bridge answers with, and what the caller raises
ERRORS: dict[str, type[Exception]] = {
    "not_found": SegmentNotFoundError,       # the remote bridge does not export that name
    "unreachable": BridgeUnreachableError,   # no answer from the remote bridge in time
    "refused": BridgeError,                  # this bridge may not ask that host, or the replica cannot be made
    "bad_request": ValueError,               # a malformed request
}


def parse_host_port(text: object) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"[V6]:PORT"`` -> (host, port); ValueError if it is not one."""
    if not isinstance(text, str):
        raise TypeError(f"an address must be a str 'HOST:PORT', not {type(text).__name__}")
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port_text)


def split_remote(name: str) -> tuple[str, str, int] | None:
    """``"name@HOST:PORT"`` -> (name, host, port); None for a local name; ValueError if malformed."""
    local, at, where = name.partition("@")
    if not at:
        return None
    host, port = parse_host_port(where)
    if port == 0:
        raise ValueError(f"{name!r}: a bridge's port is not 0")
    return namespace.validate_name(local), host, port


def is_replica_name(name: str) -> bool:
    """Whether ``name`` is (by its form) a bridge's replica of a segment of another host, whose
    processes the pids it carries (an RPC CONNECT's, a channel's control block) do not name here."""
    return REPLICA_MARK in name


def live_peer(directory: Directory, kind: int) -> bool:
    """Liveness across hosts (docs/net.md): a live entry of ``kind`` (holder or receiver) of a
    process other than this one. The bridge stands for the processes of the other host: it holds
    and watches every replica while they live, and closes it when they go."""
    me = namespace.me()[0]
    return any(e.kind == kind and e.pid != me and namespace.is_alive(e.pid, e.start) for e in directory.entries())


def _resolve(host: str, port: int) -> str:
    """``host`` as an IP literal (resolved here, in the caller, so the bridge never waits on DNS)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise BridgeUnreachableError(f"cannot resolve {host!r}: {exc.strerror}") from None
    return str(infos[0][4][0])


def request(message: dict[str, object], timeout_s: float) -> dict[str, object]:
    """Send one request to this host's bridge and return its reply (``{"ok": ...}``).

    :class:`~ombm.BridgeNotRunningError` if no bridge serves this user's folder."""
    address = namespace.socket_address(CONTROL_SOCKET)
    own = namespace.socket_address(namespace.socket_name(namespace.new_token()))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(own)  # the bridge answers to this name; 0600 under the 0700 folder
        try:
            sock.connect(address)
            sock.send(msgpack.packb(message, use_bin_type=True))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                raise BridgeNotRunningError(
                    f"no ombm bridge runs on this host (for the folder {namespace.folder()}); a remote name "
                    f"needs one: start it with `{START_HINT}`") from None
            raise
        sock.settimeout(timeout_s)
        try:
            data = sock.recv(MAX_MESSAGE)
        except (TimeoutError, socket.timeout):
            raise BridgeUnreachableError(f"this host's bridge did not answer within {timeout_s:g} s") from None
    finally:
        sock.close()
        try:
            os.unlink(own)
        except FileNotFoundError:
            pass
    try:
        reply = msgpack.unpackb(data, raw=False)
    except Exception:
        raise BridgeError("this host's bridge sent an unreadable reply") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise BridgeError("this host's bridge sent an unreadable reply")
    return reply


def raise_for(reply: dict[str, object]) -> dict[str, object]:
    """``reply`` if it says ok, else the exception its error kind documents."""
    if reply.get("ok") is True:
        return reply
    kind = reply.get("error")
    raise ERRORS.get(kind if isinstance(kind, str) else "", BridgeError)(str(reply.get("message", "")))


def import_segment(remote: str, timeout_s: float = 5.0) -> str:
    """Have this host's bridge import ``name@HOST:PORT``; the local replica's name."""
    parts = split_remote(remote)
    if parts is None:
        raise ValueError(f"{remote!r} is not a remote name (name@HOST:PORT)")
    name, host, port = parts
    reply = raise_for(request({"op": "import", "name": name, "host": _resolve(host, port), "port": port,
                               "timeout": float(timeout_s)}, timeout_s + 1.0))
    local = reply.get("local")
    if not isinstance(local, str):
        raise BridgeError("this host's bridge sent an unreadable reply")
    return namespace.validate_name(local)


def offer_segment(name: str, bridge: str, timeout_s: float = 5.0) -> str:
    """Have this host's bridge replicate the local segment ``name`` at the bridge ``"HOST:PORT"``; the
    replica's name on that host."""
    host, port = parse_host_port(bridge)
    reply = raise_for(request({"op": "offer", "name": namespace.validate_name(name), "host": _resolve(host, port),
                               "port": port, "timeout": float(timeout_s)}, timeout_s + 1.0))
    remote = reply.get("remote")
    if not isinstance(remote, str):
        raise BridgeError("this host's bridge sent an unreadable reply")
    return remote


def locate_segment(name: str, timeout_s: float = 1.0) -> list[str]:
    """The bridges (``"IP:PORT"``, sorted) that export ``name`` and answered this host's bridge within
    ``timeout_s`` (0.1 to 60 s); ``[]`` if none did. This host's own bridge is not among them."""
    if not 0.1 <= timeout_s <= 60.0:
        raise ValueError("a locate's timeout is between 0.1 and 60 seconds")
    reply = raise_for(request({"op": "locate", "name": namespace.validate_name(name), "timeout": float(timeout_s)},
                              timeout_s + 5.0))
    found = reply.get("found")
    if not isinstance(found, list) or not all(isinstance(f, str) for f in found):
        raise BridgeError("this host's bridge sent an unreadable reply")
    for where in found:
        parse_host_port(where)  # ValueError if the bridge sent no address
    return sorted(found)
