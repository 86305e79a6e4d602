"""The layer contract of ``src/ombm`` (docs/design.md, "The house in layers").

Lower layers never import higher ones::

    cli  ->  ombm (the public API)  ->  net  ->  rpc  ->  channels  ->  aio  ->  core  ->  transport  ->  base

where *base* is ``_layout``, ``errors`` and ``_native``.  The simulator stands apart: it imports
nothing of ombm outside ``ombm.sim``, and only the CLI imports it.  The transport is sans-I/O: it
imports no module that reaches the OS or the clock.  rich is the CLI's alone; simpy and matplotlib
the simulator's.  Every import counts, including those inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

LAYERS = ["cli", "ombm", "net", "rpc", "channels", "aio", "core", "transport", "base"]
BASE = {"ombm._layout", "ombm.errors", "ombm._native"}
SANS_IO_FORBIDDEN = {"os", "mmap", "socket", "select", "selectors", "threading", "time", "signal",
                     "subprocess", "asyncio", "multiprocessing"}
ONLY_IN = {"rich": "cli", "simpy": "sim", "matplotlib": "sim"}


def layer_of(module: str) -> str:
    """The layer of an ombm module name (``sim`` for the simulator)."""
    if module in BASE or any(module.startswith(b + ".") for b in BASE):
        return "base"
    if module == "ombm":
        return "ombm"
    part = module.split(".")[1]
    if part not in LAYERS and part != "sim":
        raise AssertionError(f"{module} belongs to no layer: add it to the contract")
    return part


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module ``source`` imports, absolute, with its line (``from a import b``: a.b if that
    is a module, else a)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # a submodule, or a name defined by the module
                full = f"{target}.{alias.name}"
                found.append((node.lineno, full if _module_part(full) == full else target))
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """What in ``source`` (the text of ``module``) breaks the contract."""
    own = layer_of(module)
    broken = []
    for line, target in imports_of(source, module, is_package):
        top = target.split(".")[0]
        where = f"{module}:{line} imports {target}"
        if top in ONLY_IN and ONLY_IN[top] != own:
            broken.append(f"{where}: {top} belongs to {ONLY_IN[top]} only")
        if own == "transport" and top in SANS_IO_FORBIDDEN:
            broken.append(f"{where}: the transport is sans-I/O")
        if top != "ombm" or not _is_module(target):
            continue
        theirs = layer_of(_module_part(target))
        if own == "sim" and theirs != "sim":
            broken.append(f"{where}: the simulator stands apart")
        elif theirs == "sim" and own not in ("sim", "cli"):
            broken.append(f"{where}: only the CLI uses the simulator")
        elif own != "sim" and theirs != "sim" and LAYERS.index(theirs) < LAYERS.index(own):
            broken.append(f"{where}: {own} is below {theirs}")
    return broken


def _module_part(target: str) -> str:
    """The longest prefix of ``target`` that is a module or package of ombm."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        path = SRC.joinpath(*parts[:end])
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists() or name in BASE:
            return name
    return "ombm"


def _is_module(target: str) -> bool:
    return _module_part(target) == target or target == "ombm"


def sources() -> list[Path]:
    return sorted((SRC / "ombm").rglob("*.py"))


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_the_module_keeps_to_its_layer(path: Path) -> None:
    assert violations(path.read_text(), module_name(path), path.name == "__init__.py") == []


def test_every_layer_exists() -> None:
    present = {layer_of(module_name(p)) for p in sources()}
    assert present >= {"cli", "ombm", "rpc", "channels", "aio", "core", "transport", "base", "sim"}


@pytest.mark.parametrize("module, source", [
    ("ombm.core.segment", "from ombm.rpc import client\n"),              # upward
    ("ombm.core.segment", "def f():\n    from ombm.channels import raw\n"),  # upward, lazily
    ("ombm.transport.wire", "from ombm.core import fifo\n"),              # upward
    ("ombm.transport.wire", "import time\n"),                            # sans-I/O
    ("ombm.channels.raw", "from ..rpc import slots\n"),                  # upward, relative
    ("ombm.rpc.client", "import ombm\n"),                                # the public API is above
    ("ombm.sim.machine", "from ombm.core import segment\n"),             # the simulator apart
    ("ombm.core.admin", "from ombm.sim import report\n"),                # only the CLI uses sim
    ("ombm.core.admin", "from rich.table import Table\n"),               # rich is the CLI's
])
def test_a_deliberate_breach_is_caught(module: str, source: str) -> None:
    assert violations(source, module)


@pytest.mark.parametrize("module, source", [
    ("ombm.cli.main", "import ombm\nfrom ombm.sim import cli\nfrom rich.table import Table\n"),
    ("ombm.rpc.client", "from ombm.core import segment\nfrom ombm.transport import wire\n"),
    ("ombm.transport.wire", "from ombm import _native\nfrom ombm.errors import FrameError\n"),
    ("ombm.core.segment", "from . import namespace\nimport ombm._layout as L\n"),
])
def test_a_downward_import_is_allowed(module: str, source: str) -> None:
    assert violations(source, module) == []
