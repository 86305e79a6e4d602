"""The exception tree: every exception class ombm defines lives in ``ombm.errors``, derives from
``OmbmError`` and from a builtin that fits, and is drawn in the module's docstring.

Exits are not errors: a ``SystemExit`` subclass the CLI raises to end a command with a status (such
as ``ombm.cli.sim.SimulatorMissing``) stays with the command; it is checked to be an exit only."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import ombm
import ombm.errors


def _ombm_modules() -> list[str]:
    """Every module of ombm, imported (those whose optional dependencies are missing are skipped)."""
    names = []
    for info in pkgutil.walk_packages(ombm.__path__, "ombm."):
        try:
            importlib.import_module(info.name)
        except ImportError as exc:  # an optional extra (the simulator, numpy, a benchmark peer)
            if (exc.name or "").split(".")[0] == "ombm":
                raise
            continue
        names.append(info.name)
    return names


def _subclasses(cls: type[BaseException]) -> set[type[BaseException]]:
    found = set()
    for sub in cls.__subclasses__():
        found.add(sub)
        found |= _subclasses(sub)
    return found


def _defined_in_ombm() -> list[type[BaseException]]:
    _ombm_modules()
    return sorted((c for c in _subclasses(BaseException) if c.__module__.split(".")[0] == "ombm"),
                  key=lambda c: c.__qualname__)


def _made_for_a_remote_builtin(cls: type[BaseException]) -> bool:
    """A class ombm.errors.remote_error made at run time (RemoteKeyError: RemoteError and KeyError)."""
    return (issubclass(cls, ombm.errors.RemoteError) and cls is not ombm.errors.RemoteError
            and getattr(ombm.errors, cls.__name__, None) is not cls)


def ombm_exception_classes() -> list[type[BaseException]]:
    """Every error class defined anywhere in ombm (at module level or nested); not those
    ``remote_error`` makes for remote builtin exceptions (tested in test_rpc_marshal.py)."""
    return [c for c in _defined_in_ombm() if issubclass(c, Exception) and not _made_for_a_remote_builtin(c)]


def ombm_exit_classes() -> list[type[BaseException]]:
    """Every other exception class ombm defines: the CLI's exits."""
    return [c for c in _defined_in_ombm() if not issubclass(c, Exception)]


def test_the_walk_finds_the_modules_and_classes() -> None:
    assert "ombm.errors" in _ombm_modules()
    assert ombm.errors.UnmarshalError in ombm_exception_classes()


@pytest.mark.parametrize("cls", ombm_exception_classes(), ids=lambda c: c.__qualname__)
def test_every_exception_class_is_in_the_tree(cls: type[BaseException]) -> None:
    assert cls.__module__ == "ombm.errors", f"{cls.__qualname__} is defined outside ombm/errors.py"
    assert issubclass(cls, ombm.errors.OmbmError)
    if cls is not ombm.errors.OmbmError and cls is not ombm.errors.RemoteError:  # a remote error fits no builtin
        assert any(base.__module__ == "builtins" and base is not Exception for base in cls.__mro__), \
            f"{cls.__qualname__} subclasses no fitting builtin"


@pytest.mark.parametrize("cls", ombm_exit_classes(), ids=lambda c: c.__qualname__)
def test_what_is_not_an_error_is_a_cli_exit(cls: type[BaseException]) -> None:
    assert issubclass(cls, SystemExit) and cls.__module__.startswith("ombm.cli.")


def test_the_docstring_draws_every_class() -> None:
    drawn = set(re.findall(r"^\s*(?:[│├└─ ]*)(\w+)\s", ombm.errors.__doc__ or "", re.MULTILINE))
    for cls in ombm_exception_classes():
        assert cls.__name__ in drawn, f"{cls.__name__} is missing from the tree in errors.py"


def test_the_public_api_exports_every_error() -> None:
    for cls in ombm_exception_classes():
        assert getattr(ombm, cls.__name__) is cls


def test_old_import_locations_still_work() -> None:
    from ombm.core.directory import DirectoryFullError
    from ombm.rpc.marshal import UnmarshalError

    assert DirectoryFullError is ombm.errors.DirectoryFullError
    assert UnmarshalError is ombm.errors.UnmarshalError
    assert issubclass(UnmarshalError, ValueError) and issubclass(DirectoryFullError, OSError)
