"""A/B of pipelined calls (issue 13, item 2) in one sitting: ``ombm bench load``'s outstanding rows.

Each build is an interpreter with its own ombm (a venv, or a wrapper script that sets PYTHONPATH to
a worktree's ``src``). The builds run alternately, ``--rounds`` times each, every run a fresh
process that measures, with ``ombm bench load``'s method and placement (client on CPU 0, server on
CPU 1), one client's calls/s (thousands) with n calls outstanding: ``call_async`` futures, the
asyncio client (n tasks) and n threads sharing one client, each beside its synchronous calls
(``sync``). The medians of the runs are compared (B / A > 1: B is faster here).

    python3 tools/pipe_ab.py /tmp/pyA /tmp/pyB --rounds 3

The figures are ratios of one sitting: say what the machine's load was.
"""

from __future__ import annotations

import sys

from ab import compare

ONE_RUN = r"""
import json
from ombm.cli.bench import load

def main():
    found = {}
    for system in (load._Ombm, load._OmbmAsyncio, load._OmbmThreads):
        depths = (load.SYNC, 1, 8, 32, 64) if system is load._Ombm else (2, 4, 32)
        cells = load.pipelined(system, load.Plan((1,), depths, 0.5, 500))
        for depth, cell in cells.items():
            found[f"{system.name}, {'sync' if depth == load.SYNC else depth}"] = cell.rate / 1000
    print(json.dumps(found))

if __name__ == "__main__":
    main()
"""

if __name__ == "__main__":
    sys.exit(compare(__doc__ or "", ONE_RUN, digits=".1f", ratio_digits=".2f"))
