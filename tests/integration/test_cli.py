"""The ``ombm`` command as a user meets it: ``--version``, validated arguments with a one-line error,
``ombm ls`` piped and as JSON, and ``ombm bench`` writing a file only when ``--out`` names one."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import ombm
from ombm.cli.bench import runner

CLI = "import sys; from ombm.cli.main import main; sys.exit(main(sys.argv[1:]))"


def ombm_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``ombm ARGS`` in a child process (output captured: a pipe, not a terminal)."""
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_version() -> None:
    done = ombm_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"ombm {ombm.__version__}"


@pytest.mark.parametrize(("args", "said"), [
    (("demo", "--iterations", "0"), "--iterations: must be at least 1, not 0"),
    (("demo", "--receivers", "0"), "--receivers: must be at least 1, not 0"),
    (("demo", "--receivers", "three"), "--receivers: not an integer: 'three'"),
    (("bench", "core", "--out", "/nonexistent-ombm-folder/b.md"), "--out: no such folder: /nonexistent-ombm-folder"),
])
def test_a_bad_argument_is_one_line_and_status_2(args: tuple[str, ...], said: str) -> None:
    done = ombm_cli(*args)
    assert done.returncode == 2 and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert last.endswith(said) and "Traceback" not in done.stderr
    assert not Path("/nonexistent-ombm-folder").exists()


def test_ls_piped_shows_whole_names_and_json_every_field() -> None:
    name = "a-rather-long-segment-name-that-a-narrow-terminal-would-cut-" + "x" * 40
    seg = ombm.create_segment(4096, name=name)
    try:
        table = ombm_cli("ls")
        assert table.returncode == 0 and name in table.stdout
        listed = ombm_cli("ls", "--json")
        assert listed.returncode == 0
        found = [s for s in json.loads(listed.stdout) if s["name"] == name]
        assert len(found) == 1 and found[0]["size"] == 4096 and found[0]["holders"] >= 1
        assert isinstance(found[0]["receivers"], list)
    finally:
        seg.release()


class _Suite(types.ModuleType):
    """A suite that measures nothing: what the runner does with its result is under test here."""

    def __init__(self) -> None:
        super().__init__("fake_suite")

    def run(self) -> str:
        return "rows"

    def markdown(self, rows: str) -> str:
        return f"## Fake\n\n{rows}\n"


def test_bench_writes_a_file_only_with_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(runner, "_suite_module", lambda suite: _Suite())
    monkeypatch.chdir(tmp_path)
    assert runner.main(argparse.Namespace(suite="core", quick=True, out=None)) == 0
    assert "Fake" in capsys.readouterr().out and list(tmp_path.iterdir()) == []
    out = tmp_path / "b.md"
    assert runner.main(argparse.Namespace(suite="core", quick=True, out=str(out))) == 0
    text = out.read_text()
    assert "## Fake" in text and "last run: `ombm bench core --quick --out " in text


def test_a_source_tree_without_its_native_module_says_how_to_build_it(tmp_path: Path) -> None:
    import shutil

    # the repository's package (with the C sources' folder), or the installed one (without): both unbuilt
    source = Path(__file__).resolve().parents[2] / "src" / "ombm"
    source = source if source.is_dir() else Path(ombm.__file__).parent
    shutil.copytree(source, tmp_path / "ombm", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    done = subprocess.run([sys.executable, "-c", "import ombm"], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    assert "ImportError: ombm's native module is not built in" in done.stderr and "pip install -e ." in done.stderr
