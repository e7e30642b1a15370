"""Issue 14 point 14: `pop53 --version` from one source, and a runtime install that does not
pull the benchmarks' charting library (matplotlib is in the `bench` extra)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
META = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[=<>\[ ;]", r, maxsplit=1)[0].lower() for r in reqs}


def test_version():
    from pop53 import __version__
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "pop53", "--version"], capture_output=True,
                       text=True, timeout=30, env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"pop53 {__version__}"
    # one source: the package's __version__ (setuptools reads it; no second copy to forget)
    assert "version" in META.get("dynamic", []) and "version" not in META


def test_matplotlib_only_in_the_bench_extra():
    assert "matplotlib" not in _names(META["dependencies"])
    assert "matplotlib" in _names(META["optional-dependencies"]["bench"])
    # a fresh machine still gets it for bench/ and the lab's failover chart
    assert '".[test,bench]"' in (REPO / "scripts" / "setup.sh").read_text()


def test_the_package_imports_without_matplotlib():
    """No module of the package needs matplotlib at import (only bench/ and the lab's chart,
    which says which extra to install)."""
    code = ("import sys, pkgutil, importlib; sys.modules['matplotlib'] = None\n"
            "import pop53\n"
            "for m in pkgutil.walk_packages(pop53.__path__, 'pop53.'):\n"
            "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
            "from pop53.lab import experiments as pop\n"
            "from pop53.errors import Pop53Error\n"
            "try:\n"
            "    pop.plot_failover_cdf([], None, 't')\n"
            "except Pop53Error as e:\n"
            "    print(e)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert "pip install 'pop53[bench]'" in r.stdout
