"""Build the one native module, ombm._native, from the C files of src/ombm/_native/ (one concept
each; native.h maps them). Linux only: it uses futexes and /dev/shm."""
import os
import sys
from glob import glob

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    raise SystemExit(f"ombm needs Linux (futexes, /dev/shm): this is {sys.platform}")

NATIVE = "src/ombm/_native"
sources = sorted(glob(f"{NATIVE}/*.c"))
if not sources:
    raise SystemExit(f"no C sources in {NATIVE}: run setup.py from the project's root")

# -Werror only where we build on purpose (CI sets OMBM_WERROR=1): a user's newer compiler may warn
# about something harmless, and that must not fail their install
strict = ["-Werror"] if os.environ.get("OMBM_WERROR") == "1" else []

setup(
    ext_modules=[
        Extension(
            "ombm._native",
            sources=sources,
            depends=sorted(glob(f"{NATIVE}/*.h")),
            # -fvisibility=hidden: the parts' shared functions stay inside the module
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", *strict, "-fvisibility=hidden"],
        )
    ]
)
