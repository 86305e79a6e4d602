"""The bridge's side of this host's control socket, ``sock-bridge`` (the requests: ``core/remote.py``).

A Unix datagram socket in the per-user folder (0700, the socket 0600): only this user's processes reach
it, one bridge per folder. A bridge that died leaves the file; the next bridge takes it over (nobody
answers a connect on it), and ``ombm gc`` removes it meanwhile. Requests are msgpack maps; each comes
with a function that sends the answer back to the asking process's own socket.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Callable, Iterator

import msgpack

from ombm.core import namespace, remote
from ombm.core.segment import _unlink_if_same
from ombm.errors import BridgeError

__all__ = ["ControlSocket", "Reply", "error"]

Reply = Callable[[dict[str, object]], None]


def error(kind: str, message: str) -> dict[str, object]:
    """A failed answer: ``kind`` is one of ``remote.ERRORS``."""
    return {"ok": False, "error": kind, "message": message}


class ControlSocket:
    """``sock-bridge`` bound by this bridge (:class:`~ombm.BridgeError` if a live bridge holds it)."""

    def __init__(self) -> None:
        self.address = namespace.socket_address(remote.CONTROL_SOCKET)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._bind()
            os.chmod(self.address, 0o600)
            st = os.stat(self.address)
        except BaseException:
            self.sock.close()
            raise
        self._ident = (st.st_dev, st.st_ino)

    def _bind(self) -> None:
        try:
            self.sock.bind(self.address)
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(self.address)
        except ConnectionRefusedError:
            os.unlink(self.address)  # nobody holds it: a bridge that died
            self.sock.bind(self.address)
        else:
            raise BridgeError(f"a bridge already serves this host's folder ({namespace.folder()})")
        finally:
            probe.close()

    def requests(self, most: int) -> Iterator[tuple[dict[str, object] | None, Reply]]:
        """Up to ``most`` requests waiting: (the request, or None if it is no msgpack map; its reply)."""
        for _ in range(most):
            try:
                data, client = self.sock.recvfrom(remote.MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                continue
            if not isinstance(client, str) or not client:
                continue  # an unbound sender: nowhere to answer
            try:
                message = msgpack.unpackb(data, raw=False)
            except Exception:  # whatever msgpack raises for bad bytes
                message = None
            yield (message if isinstance(message, dict) else None), self._reply_to(client)

    def _reply_to(self, client: str) -> Reply:
        if client.startswith("/proc/self/fd/"):  # the client's own view of a long folder path: ours differs
            client = namespace.socket_address(os.path.basename(client))

        def reply(message: dict[str, object]) -> None:
            try:
                self.sock.sendto(msgpack.packb(message, use_bin_type=True), client)
            except OSError:
                pass  # the client gave up

        return reply

    def close(self) -> None:
        """Close the socket and unlink its name if it is still ours."""
        self.sock.close()
        _unlink_if_same(self.address, self._ident)
