"""The ``ombm`` command (``ombm ls``, ``gc``, ``demo``, ``bench``, ``sim``): thin, over the library.

The top layer: it may import every other one, and only it uses rich.
"""

from ombm.cli.main import main

__all__ = ["main"]
