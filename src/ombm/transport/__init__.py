"""The reliable transport, sans-I/O (paper §4): frames, the RPC protocol, the stream protocol and
retransmission timing.  Frames and ``now`` in, events and frames out: nothing here touches an OS
resource (no os, mmap, socket, select, threading or time), so the same code runs over shared memory
and over datagrams.

Layer: above ``_layout``/``errors``/``_native`` only.
"""
