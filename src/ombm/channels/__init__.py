"""Channels over segments (paper §3.2, §4): the raw best-effort channel, the reliable stream and the
arrays they carry.  Each drives a transport over channel segments of the core.

Layer: above ``core`` and ``transport``; below ``rpc`` and ``cli``.
"""
