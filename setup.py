"""Builds the one data-plane extension, pop53._core, from ext/.

Switches (environment):
  POP53_DEBUG=1     invariant checks (POP53_DEBUG in C), -O0 -g, Cython boundscheck on.
  POP53_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (implies POP53_DEBUG).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("POP53_DEBUG") == "1" or os.environ.get("POP53_SANITIZE") == "1"
sanitize = os.environ.get("POP53_SANITIZE") == "1"

cflags = ["-std=gnu11", "-Wno-unused-function", "-fno-strict-aliasing"]
ldflags = []
macros = []
if debug:
    cflags += ["-O0", "-g3"]
    macros.append(("POP53_DEBUG", "1"))
else:
    cflags += ["-O3", "-march=x86-64-v2"] if os.uname().machine == "x86_64" else ["-O3"]
if sanitize:
    cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    ldflags += ["-fsanitize=address,undefined"]

ext = Extension(
    "pop53._core",
    sources=["ext/_core.pyx"],
    include_dirs=["ext", "ext/include"],
    define_macros=macros,
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)

setup(
    ext_modules=cythonize(
        [ext],
        compiler_directives={
            "language_level": 3,
            "boundscheck": debug,
            "wraparound": False,
            "initializedcheck": debug,
            "cdivision": True,
            "embedsignature": True,
        },
        include_path=["ext"],
        force=debug,
    ),
)
