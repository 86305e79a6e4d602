"""Dependencies by need: the core and the CLI run without the optional extras.

``pip install ombm`` brings msgpack and rich only; the simulator (simpy, matplotlib) is the
extra ``[sim]``, numpy ``[numpy]``, the benchmark peers ``[bench]``.  Each test blocks the
optional packages in a fresh interpreter (``sys.modules[name] = None`` makes importing them
fail as if they were not installed) and checks what still works and what is said.
"""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("simpy", "matplotlib", "numpy", "zmq", "grpc", "iceoryx2")
BLOCK = "import sys\nfor name in %r: sys.modules[name] = None\n" % (OPTIONAL,)


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=120)


def test_the_core_imports_none_of_the_extras() -> None:
    done = run("import ombm, ombm.rpc, ombm.aio, ombm.cli.main\n"
               "loaded = sorted(m for m in sys.modules if m.split('.')[0] in %r and sys.modules[m] is not None)\n"
               "print(loaded)" % (OPTIONAL,))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_cli_parses_every_command_without_the_extras() -> None:
    done = run("from ombm.cli.main import build_parser\n"
               "p = build_parser()\n"
               "for argv in (['ls'], ['gc'], ['demo'], ['bench', 'core'], ['sim', 'table1']):\n"
               "    p.parse_args(argv)\n"
               "print('ok')")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_ombm_sim_without_the_extra_says_which_command_installs_it() -> None:
    done = run("from ombm.cli import main\nsys.exit(main(['sim', 'table1']))")
    assert done.returncode == 2, done.stderr
    assert "pip install 'ombm[sim]'" in done.stdout
    assert "Traceback" not in done.stderr


def test_arrays_without_numpy_say_which_command_installs_it() -> None:
    done = run("from ombm.channels.arrays import check_array\n"
               "try:\n    check_array(b'x')\nexcept ImportError as e:\n    print(e)\n")
    assert done.returncode == 0, done.stderr
    assert "pip install 'ombm[numpy]'" in done.stdout
