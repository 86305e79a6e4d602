"""``mypy --strict`` passes on ``src/ombm``, with the project's configuration (``[tool.mypy]`` in
pyproject.toml: Python 3.10 semantics, the untyped third-party packages named there).

The verdict depends on mypy's version, which the ``[test]`` extra pins; without mypy the test is
skipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_strict_passes_on_the_package(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(tmp_path / "mypy-cache"), "src/ombm"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
