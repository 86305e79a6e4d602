"""Channels across machines (paper §3.2.3): the per-host bridge.

A segment bound on several hosts: each unit written on one host travels as a UDP datagram to the
other hosts that bind the segment and is written into their replica, raising their signals through
the ordinary signal path. ``ombm bridge`` runs one; :class:`Bridge` embeds one. Remote names
(``ombm.open_segment("name@HOST:PORT")``) go through this host's bridge (``ombm.core.remote``).

Layer: above ``rpc``, ``channels``, ``core`` and ``transport``; below the public API and the CLI.
"""

from ombm.net.bridge import STAT_KEYS, Bridge, replica_name
from ombm.net.keys import load_key

__all__ = ["Bridge", "STAT_KEYS", "load_key", "replica_name"]
