"""Benchmarks: ombm against the IPC a Python user would otherwise pick, in one run (DESIGN §5)."""
