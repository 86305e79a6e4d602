"""The suite's own guards (tests/conftest.py) fail tests that leave objects or processes behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ombm

HERE = Path(__file__).resolve().parent
SRC = os.path.dirname(os.path.dirname(ombm.__file__))  # where the ombm under test lives (installed or src/)

INNER_TESTS = '''
import multiprocessing, time
import ombm

KEEP = []

def test_clean():
    with ombm.create_segment(64) as seg:
        seg.bind().write(0, b"x" * 64)

def test_leaks_a_segment():
    KEEP.append(ombm.create_segment(64))

def test_leaks_a_receiver_fifo():
    ombm.sig_wait(0)   # creates this thread's receiver and never closes it

def test_leaves_a_child_running():
    p = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,), daemon=True)
    p.start()
'''


@pytest.mark.processes
def test_guards_fail_leaky_tests_and_pass_clean_ones(tmp_path):
    shutil.copy(HERE.parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    env = dict(os.environ, PYTHONPATH=SRC, OMBM_TEST_LEFTOVER_GRACE_S="0.3")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rE", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert "4 passed, 3 errors" in out, out  # a guard fails the test in its teardown
    errors = out.split("= ERRORS =")[1]
    assert "ERROR at teardown of test_clean" not in errors
    for test, message in [
        ("test_leaks_a_segment", "shared-memory objects left behind: /dev/shm/ombm-"),
        ("test_leaks_a_receiver_fifo", "shared-memory objects left behind: /dev/shm/ombm-"),
        ("test_leaves_a_child_running", "child processes still running after the test (killed)"),
    ]:
        section = errors.split(f"ERROR at teardown of {test} ")[1].split("\n_")[0]
        assert message in section, out
