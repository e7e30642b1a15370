"""Builds the one data-plane extension, pop53._core, from ext/.

Switches (environment):
  POP53_DEBUG=1     invariant checks (POP53_DEBUG in C), -O0 -g, Cython boundscheck on.
  POP53_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (implies POP53_DEBUG).
"""
import os
import shutil
import subprocess
import sysconfig

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


def build_bpf() -> None:
    """The XDP program (ext/bpf/, issue 16) with clang's BPF target, beside the package data.
    Without clang the server still builds; `[server] xdp` then falls back to sockets."""
    out = "src/pop53/data/pop53_xdp.bpf.o"
    clang = shutil.which("clang")
    if clang is None:
        print("setup: clang not found, the XDP program is not built (pop53 serves over sockets)")
        return
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{os.uname().machine}-linux-gnu"
    try:
        subprocess.run([clang, "-O2", "-g", "-Wall", "-target", "bpf",
                        f"-I/usr/include/{multiarch}", "-c", "ext/bpf/pop53_xdp.c", "-o", out],
                       check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"setup: the XDP program did not build ({exc}); pop53 serves over sockets")


build_bpf()

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
