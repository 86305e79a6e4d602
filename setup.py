"""Build the one native module (atomics, futex, spin-then-sleep, fused copy+checksum)."""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ombm._native",
            sources=["src/ombm/_native.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
