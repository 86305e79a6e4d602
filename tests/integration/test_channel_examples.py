"""The channel examples run end to end as a user would run them (small sizes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import ombm

pytestmark = pytest.mark.processes

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(ombm.__file__)) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               COLUMNS="160")
    for key in [k for k in env if k.startswith("OMBM_FAULT_")]:
        del env[key]
    return subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args], env=env,
                          capture_output=True, text=True, timeout=180)


def test_frame_pipeline_the_slow_viewer_drops_the_others_do_not():
    pytest.importorskip("numpy")
    run = run_example("frame_pipeline.py", "--fps", "40", "--seconds", "1.5", "--slow-ms", "100")
    assert run.returncode == 0, run.stderr
    rows = re.findall(r"│\s*(\d)( \(slow\))?\s*│\s*(\d+) ms\s*│\s*(\d+)\s*│\s*(\d+)\s*│", run.stdout)
    assert len(rows) == 3, run.stdout
    slow = [r for r in rows if r[1]]
    assert len(slow) == 1 and int(slow[0][4]) > 0  # the slow viewer missed frames
    assert all(int(r[3]) > 0 for r in rows)


def test_bulk_copy_copies_a_file_between_processes(tmp_path):
    source, dest = tmp_path / "in.bin", tmp_path / "out.bin"
    data = os.urandom(5 * 2**20 + 12345)
    source.write_bytes(data)
    run = run_example("bulk_copy.py", str(source), str(dest))
    assert run.returncode == 0, run.stderr
    assert "matches" in run.stdout
    assert dest.read_bytes() == data
