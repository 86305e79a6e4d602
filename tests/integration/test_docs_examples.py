"""The README's Python examples run as written (each block a program of its own, in a fresh process
with a folder of its own, so that its names cannot meet another run's)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if README.exists() else []

pytestmark = pytest.mark.skipif(not BLOCKS, reason="needs the source tree's README.md")


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_a_readme_example_runs_as_written(block: str, shm_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120, env=shm_env)
    assert done.returncode == 0, f"{block}\n---\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
