"""Reliable RPC over memory-based messaging (paper §4).

    srv = ombm.rpc.Server("calc", obj).start()     # obj's public methods, on the well-known channel "calc"
    with ombm.rpc.connect("calc", timeout=5.0) as cli:
        cli.add(1, 2)                              # -> 3, in a few microseconds
        cli.oneway("log", "hi")                    # no reply (paper §8)
        fut = cli.call_async("add", 3, 4); fut.result()
    client = await ombm.rpc.connect_async("calc"); await client.add(1, 2)   # asyncio
    ombm.rpc.locate("calc")                        # ["calc@IP:PORT", ...]: the hosts that serve it

Layers: ``wire`` (frames), ``marshal`` (msgpack, out-of-band buffers, no
pickle unless asked), ``protocol`` (the sans-I/O reliable transport),
``channel`` (slots on segments), ``timer`` (the asynchronous retransmission
timer), ``client`` and ``server`` (the I/O glue).

Both log what they do to connections (connects, reconnections, drops, reaps,
retransmission storms) to ``logging.getLogger("ombm.rpc")``, quiet unless the
application configures logging (``logging.basicConfig(level=logging.INFO)``).
"""

import logging

from ombm.errors import CallTimeout, RemoteError, ServerGoneError, ServiceNotFoundError, UnmarshalError
from ombm.rpc.aio import AsyncClient, connect_async
from ombm.rpc.client import CallOptions, Client, Future, connect
from ombm.rpc.locate import locate
from ombm.rpc.marshal import register_type
from ombm.rpc.server import Server, serve_async

logging.getLogger("ombm").addHandler(logging.NullHandler())  # quiet by default (a library's logging)

__all__ = [
    "AsyncClient",
    "CallOptions",
    "CallTimeout",
    "Client",
    "Future",
    "RemoteError",
    "Server",
    "ServerGoneError",
    "ServiceNotFoundError",
    "UnmarshalError",
    "connect",
    "connect_async",
    "locate",
    "register_type",
    "serve_async",
]
