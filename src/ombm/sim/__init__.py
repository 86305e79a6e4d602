"""ombm.sim: a discrete-event simulator of the paper's ParaDiGM hardware (§3, §5, §6).

It reproduces Cheriton & Kutter's Tables 1 and 4 and Figures 5-8 by running a
simpy model, and explores machines the paper could not build. Pure Python:
it touches no OS resource and imports nothing from the ombm runtime.

Layers, lowest first:

* :mod:`~ombm.sim.params`     every input, with its paper section or the assumption made
* :mod:`~ombm.sim.machine`    processors, signal FIFOs, directories, buses and links
* :mod:`~ombm.sim.memory`     write-invalidate and message-mode protocols
* :mod:`~ombm.sim.mbm`        the four configurations' send and receive paths
* :mod:`~ombm.sim.rpc`        an RPC over two channels (Tables 2 and 4)
* :mod:`~ombm.sim.scenarios`  the paper's results (a)-(e); :mod:`~ombm.sim.explore` (f)-(h)
* :mod:`~ombm.sim.report`, :mod:`~ombm.sim.figures`   output (the command line: :mod:`ombm.cli.sim`)

Example::

    from ombm.sim import scenarios
    scenarios.fig6()[0]["speedup"]      # speedup through a shared L2

The report (``ombm.sim.report``, which imports matplotlib) is not imported here.
"""

from ombm.sim.machine import Machine, Mode
from ombm.sim.mbm import CONFIGS, CONSISTENCY, OPTIMIZED, SEQUENCE, SIGNALS, SOFTWARE, Config, Messenger
from ombm.sim.params import FUTURE, PARADIGM, MachineParams
from ombm.sim.rpc import rpc

__all__ = [
    "CONFIGS",
    "CONSISTENCY",
    "Config",
    "FUTURE",
    "Machine",
    "MachineParams",
    "Messenger",
    "Mode",
    "OPTIMIZED",
    "PARADIGM",
    "SEQUENCE",
    "SIGNALS",
    "SOFTWARE",
    "rpc",
]
