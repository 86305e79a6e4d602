"""``python -m ombm.sim``: run the simulator's command line (see :mod:`ombm.sim.cli`)."""

import sys

from .cli import main

sys.exit(main())
