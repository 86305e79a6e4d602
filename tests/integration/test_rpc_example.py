"""examples/work_queue.py runs, hands every item out exactly once, and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rpc_helpers import segments_of, service_name
import ombm

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "work_queue.py"


def test_work_queue_example():
    name = service_name("work-queue")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(ombm.__file__)) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "120"
    for key in [k for k in env if k.startswith("OMBM_FAULT_")]:
        del env[key]
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--workers", "3", "--items", "300", "--service", name, "--timeout", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "every one of the 300 items was done exactly once" in out
    for worker in ("worker-0", "worker-1", "worker-2"):
        assert worker in out
    assert segments_of(name) == set()
