"""At-most-once RPC between real processes whose signals are dropped and messages corrupted (paper §3.2, §4).

Server and client each run in a spawned child with ``OMBM_FAULT_DROP`` and
``OMBM_FAULT_CORRUPT`` set (read at import), so both directions lose and
damage frames. A non-idempotent ``increment()`` shows any call executed twice
or lost.
"""

from __future__ import annotations

import pytest

from rpc_helpers import Children, expect, increment_many, join, serve_forever, service_name

pytestmark = [pytest.mark.processes, pytest.mark.fault_injection]

CALLS = 2000
ONEWAY = 200


def _faults(seed: int) -> dict:
    return {"OMBM_FAULT_DROP": "0.05", "OMBM_FAULT_CORRUPT": "0.01", "OMBM_FAULT_SEED": str(seed)}


@pytest.mark.parametrize("seed", [1, 2])
def test_non_idempotent_calls_complete_exactly_once_under_faults(seed):
    name = service_name(f"faults{seed}")
    with Children() as children:
        server, sconn = children.spawn(serve_forever, name, "counter", env=_faults(seed))
        expect(sconn, "ready")
        client, cconn = children.spawn(increment_many, name, CALLS, ONEWAY, env=_faults(seed + 1000))
        expect(cconn, "ready")
        result = expect(cconn, "result", timeout=120)
        assert join(client) == 0

        # every call returned its own value, exactly once, in order; one-way calls landed once each
        assert result["results"] == list(range(1, CALLS + 1))
        assert result["final"] == CALLS + ONEWAY
        assert result["final_again"] == CALLS + ONEWAY

        # the faults really happened, on both sides, and were repaired by retransmission
        assert result["client"]["retransmits"] > 0
        client_faults = result["ombm"]
        server.terminate()  # SIGTERM: serve_forever returns and reports
        served = expect(sconn, "result")
        assert join(server) == 0
        server_faults = served["ombm"]
        dropped = client_faults.get("signals_dropped_fault", 0) + server_faults.get("signals_dropped_fault", 0)
        corrupted = client_faults.get("messages_corrupted_fault", 0) + server_faults.get("messages_corrupted_fault", 0)
        assert dropped > 0 and corrupted > 0, (client_faults, server_faults)
        # the server executed each increment and bump exactly once (+ the reads of the counter)
        assert served["stats"]["errors"] == 0
        assert served["stats"]["calls"] >= CALLS + ONEWAY + 2
