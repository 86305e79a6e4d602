"""The core of memory-based messaging (paper §3.1-§3.3): segments, their directory, signal FIFOs,
delivery, address-valued signals, and the lifecycle and reclamation of what lives in shared memory.

Layer: above ``transport`` and ``_layout``/``errors``/``_native``; below ``channels``, ``rpc`` and ``cli``.
"""
