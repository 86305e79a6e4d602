"""A remote procedure call over two MBM channels, as in §4 and §5.2 (Tables 2 and 4).

This module owns the composition of an RPC from the message paths of
:mod:`ombm.sim.mbm` and the library components of Table 2: the client maps
the object to its request channel and marshals, the send path signals the
server, which maps the channel back to the object and unmarshals; the reply
travels the same way on the return channel. Table 2's "trigger signal" is not
a software step here: the configuration's signal path (signal-on-write, or
the ``Signal`` trap) is simulated instead.

Marshal and unmarshal cost Table 2's 2 µs per 32-byte line each (a copy);
a null message costs none but still occupies one line, its header. Table 4's
"Send 1KB" is a 1 KB request with a null reply.
"""

from __future__ import annotations

from ombm.sim.machine import Machine, Process, placement
from ombm.sim.mbm import Channel, Config, Messenger
from ombm.sim.params import TABLE2, Component, MachineParams


def _steps(params: MachineParams, nbytes: int, verb: str) -> tuple[Component | None, int]:
    """The per-line (un)marshal step for ``nbytes`` and the lines the message occupies."""
    data_lines = -(-nbytes // params.line_bytes)
    step = TABLE2[f"{verb} 32-bytes"] if data_lines else None
    return step, max(1, data_lines)


def rpc(params: MachineParams, config: Config, level: int,
        request_bytes: int, reply_bytes: int) -> float:
    """Simulate one call from client to server at ``level``; latency until the client has the reply."""
    client, server = placement(params, level)
    machine = Machine(params, max(client, server) + 1)
    messenger = Messenger(machine, config)
    request_line, request_lines = _steps(params, request_bytes, "marshal")
    reply_line, reply_lines = _steps(params, reply_bytes, "marshal")
    request = messenger.open(client, server, request_lines)
    reply = messenger.open(server, client, reply_lines)
    finished: list[float] = []

    def call(p: int, out: Channel, per_line: Component | None) -> Process:
        yield from machine.cpu(p, TABLE2["map from object to channel"])
        yield from messenger.send(out, per_line)

    def accept(p: int, nbytes: int) -> Process:
        channel = yield from messenger.receive(p)
        yield from machine.cpu(p, TABLE2["map from channel to object"])
        yield from messenger.read(p, channel, _steps(params, nbytes, "unmarshal")[0])

    def client_side() -> Process:
        yield from call(client, request, request_line)
        yield from accept(client, reply_bytes)
        finished.append(machine.env.now)

    def server_side() -> Process:
        yield from accept(server, request_bytes)
        yield from call(server, reply, reply_line)

    machine.env.process(client_side())
    machine.env.process(server_side())
    machine.env.run()
    return finished[0]
