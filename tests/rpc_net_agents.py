"""RPC across hosts in the tests: the scripts of an RPC server process and of a client agent, run on
a "host" (tests/integration/net_hosts.py: a private OMBM_SHM_DIR; tests/net: a network namespace).
Both take one JSON line in and answer one JSON line out. The server's ``bump(key)`` is not
idempotent (a counter per key, returned with its key): a call executed twice, or answered with
another call's result, shows.
"""

from __future__ import annotations

import json
import select
import subprocess
from typing import Any

ANSWER_S = 30.0

# the end of an agent's script: ``serve(cmd)`` for each JSON line until {"op": "exit"}, its answer (or
# the exception it raised) as a JSON line
AGENT_LOOP = r"""
import json as _json, sys as _sys, traceback as _traceback
print(_json.dumps({"ok": True, "ready": True}), flush=True)
for _line in _sys.stdin:
    cmd = _json.loads(_line)
    if cmd["op"] == "exit":
        break
    try:
        answer = {"ok": True, **serve(cmd)}
    except Exception as exc:
        answer = {"ok": False, "type": type(exc).__name__, "message": str(exc),
                  "bases": [c.__name__ for c in type(exc).__mro__], "trace": _traceback.format_exc()}
    print(_json.dumps(answer), flush=True)
"""


RPC_SERVER = r"""
import json, sys, threading
import ombm.rpc

class Calc:
    def __init__(self):
        self.counts = {}
    def add(self, a, b):
        return a + b
    def echo(self, value):
        return value
    def blob(self, n):
        return bytes(range(256)) * (n // 256) + bytes(n % 256)
    def fail(self, message):
        raise ValueError(message)
    def bump(self, key):                  # not idempotent: executed twice, it says so
        self.counts[key] = self.counts.get(key, 0) + 1
        return [key, self.counts[key]]
    def note(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1
    def count(self, key):
        return self.counts.get(key, 0)
    def tally(self):
        return {"keys": len(self.counts), "calls": sum(self.counts.values()), "most": max(self.counts.values(), default=0)}

server = ombm.rpc.Server(sys.argv[1], Calc()).start()
print(json.dumps({"ok": True, "ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "exit":
        break
    if cmd["op"] == "connections":
        print(json.dumps({"ok": True, "n": len(server._connections), "stats": server.stats}), flush=True)
    elif cmd["op"] == "tally":
        calc = server.obj
        print(json.dumps({"ok": True, "value": {"keys": len(calc.counts), "calls": sum(calc.counts.values()),
                                                "most": max(calc.counts.values(), default=0)}}), flush=True)
server.stop()
"""

RPC_AGENT = r"""
import asyncio, dataclasses, json, sys, time, traceback
import ombm, ombm.rpc

clients = {}

def outcome(fn, *args):
    try:
        return {"value": fn(*args)}
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}

def kinds(client, name):
    out = {}
    out["sync"] = [client.add(i, i + 1) for i in range(50)]
    out["keyword"] = client.call("add", a=2, b=3)
    out["async"] = [f.result() for f in [client.call_async("add", i, 10) for i in range(40)]]
    client.oneway("note", "one-way " + name)
    deadline = time.monotonic() + 10.0                      # a one-way call may be overtaken by the next call
    while client.count("one-way " + name) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    out["oneway"] = client.count("one-way " + name)
    big = bytes(range(256)) * 2400                          # 614,400 bytes: a call of several fragments
    out["large_call"] = client.echo(big) == big
    out["large_reply"] = client.blob(700_001) == bytes(range(256)) * (700_001 // 256) + bytes(700_001 % 256)
    out["error"] = outcome(client.fail, "remote trouble")
    out["no_method"] = outcome(client.call, "nope")["raised"]
    async def aio():
        ac = await ombm.rpc.connect_async(name, timeout=10.0)
        try:
            return await asyncio.gather(*(ac.add(i, 100) for i in range(20)))
        finally:
            await ac.close()
    out["asyncio"] = asyncio.run(aio())
    return out

def serve(cmd):
    op = cmd["op"]
    if op == "connect":
        clients[cmd["as"]] = ombm.rpc.connect(cmd["name"], timeout=cmd.get("timeout", 10.0))
        return {}
    if op == "kinds":
        return {"kinds": kinds(clients[cmd["as"]], cmd["name"])}
    if op == "call":
        t = time.monotonic()
        result = outcome(clients[cmd["as"]].call, cmd["method"], *cmd.get("args", []))
        return {**result, "elapsed": time.monotonic() - t}
    if op == "bumps":            # a non-idempotent call per key, each once: synchronous, then pipelined
        client, wrong, raised = clients[cmd["as"]], [], []
        keys = [f"{cmd['prefix']}-{i}" for i in range(cmd["n"])]
        half, window = len(keys) // 2, cmd.get("window", 8)
        results = []
        for key in keys[:half]:
            try:
                results.append((key, client.bump(key)))
            except Exception as exc:
                raised.append([key, type(exc).__name__, str(exc)])
        for at in range(half, len(keys), window):
            futures = [(key, client.call_async("bump", key)) for key in keys[at:at + window]]
            for key, future in futures:
                try:
                    results.append((key, future.result()))
                except Exception as exc:
                    raised.append([key, type(exc).__name__, str(exc)])
        wrong = [[key, got] for key, got in results if got != [key, 1]]
        return {"done": len(results), "wrong": wrong, "raised": raised[:10], "n_raised": len(raised),
                "stats": dataclasses.asdict(client.statistics())}
    if op == "close":
        clients.pop(cmd["as"]).close()
        return {}
    if op == "try_connect":
        return outcome(lambda: ombm.rpc.connect(cmd["name"], timeout=cmd.get("timeout", 5.0)).close())
    raise ValueError(op)

""" + AGENT_LOOP + r"""
for client in clients.values():
    client.close()
"""


class JsonAgent:
    """A process running one of the scripts above: ``agent.ok(op, **fields)`` -> its answer."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        assert self._line(ANSWER_S)["ready"]

    def _line(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            raise TimeoutError(f"no answer from {self.proc.args!r} within {timeout_s} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args!r} ended (status {self.proc.wait(5)})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ok(self, op: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Ask ``op``; ``timeout`` (also passed on) lengthens the wait for the answer."""
        assert self.proc.stdin is not None
        if timeout is not None:
            fields["timeout"] = timeout
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        answer = self._line(ANSWER_S + (timeout or 0.0))
        assert answer["ok"], answer
        return answer

    def exit(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(ANSWER_S)
