"""The native module's stub (``src/ombm/_native.pyi``) says what the module has: mypy's stubtest
compares them (every function, class, method and constant of ``ombm._native`` against the stub)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ombm

pytest.importorskip("mypy")

SRC = Path(ombm.__file__).resolve().parent.parent  # the ombm under test: its stub and its build


def test_stub_matches_the_native_module(tmp_path: Path) -> None:
    # stubtest imports the module and finds the stub on MYPYPATH: both from the tree under test
    # (an installed ombm elsewhere must not answer); run from an empty folder so that no
    # project mypy configuration applies and the cache stays out of the tree
    # (an installed ombm is found by mypy as an installed package with its stub, PEP 561, and
    # mypy refuses site-packages on MYPYPATH)
    env = dict(os.environ)
    if SRC.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
        env["MYPYPATH"] = str(SRC)
    result = subprocess.run([sys.executable, "-m", "mypy.stubtest", "ombm._native"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
