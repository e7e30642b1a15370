"""Issue 14 point 9: relative `$INCLUDE` names resolve against the zone directory
([server] zone_dir, else the config file's directory), not the working directory; nested
includes too, and every file read is in the load's digests (the saved-image check)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pop53 import config as cfgmod
from pop53.errors import ZoneError
from pop53.zone.zonefile import load_zone_file

REPO = Path(__file__).resolve().parents[2]
MAIN = """$ORIGIN inc.example.
$TTL 300
@ SOA ns1 h 1 3600 600 86400 60
@ NS ns1
ns1 A 192.0.2.1
$INCLUDE "parts/one.zone"
"""


def _tree(root: Path) -> Path:
    (root / "parts").mkdir(parents=True)
    (root / "parts" / "one.zone").write_text("one A 192.0.2.11\n$INCLUDE parts/two.zone\n")
    (root / "parts" / "two.zone").write_text("two A 192.0.2.12\n")
    main = root / "inc.example.zone"
    main.write_text(MAIN)
    return main


def _addresses(data) -> dict:
    return {str(n).split(".")[0]: rds[0].address for n, node in data.zone.nodes.items()
            for rds in node.rdatasets if rds.rdtype == 1}


def test_relative_includes_resolve_against_the_zone_dir(tmp_path, monkeypatch):
    main = _tree(tmp_path / "zones")
    monkeypatch.chdir("/")                  # the working directory has nothing to do with it
    data = load_zone_file(main, "inc.example.", include_dir=str(tmp_path / "zones"))
    assert _addresses(data) == {"ns1": "192.0.2.1", "one": "192.0.2.11", "two": "192.0.2.12"}
    parts = tmp_path / "zones" / "parts"
    assert data.files == {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
                          for p in (main, parts / "one.zone", parts / "two.zone")}


def test_without_a_zone_dir_the_working_directory_as_before(tmp_path, monkeypatch):
    main = _tree(tmp_path / "zones")
    monkeypatch.chdir("/")
    with pytest.raises(ZoneError) as err:
        load_zone_file(main, "inc.example.")
    assert "cannot read included file" in str(err.value) and f"{main}:6" in str(err.value)
    monkeypatch.chdir(tmp_path / "zones")
    assert "two" in _addresses(load_zone_file(main, "inc.example."))


def test_the_zone_dir_is_per_load_not_per_process(tmp_path):
    """Loads in two threads with two zone directories do not see each other's."""
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    (tmp_path / "b" / "parts" / "two.zone").write_text("two A 192.0.2.99\n")
    out, errors = {}, []

    def load(name, path):
        try:
            for _ in range(20):
                out[name] = _addresses(load_zone_file(path, "inc.example.",
                                                      include_dir=str(path.parent)))["two"]
        except Exception as exc:  # noqa: BLE001  reported below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=("a", a)), threading.Thread(target=load, args=("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and out == {"a": "192.0.2.12", "b": "192.0.2.99"}


def test_zone_dir_from_the_config(tmp_path):
    _tree(tmp_path / "etc" / "zones")
    conf = tmp_path / "etc" / "pop53.toml"
    conf.write_text('[server]\nzone_dir = "zones"\n[[zone]]\nname = "inc.example."\n'
                    'file = "inc.example.zone"\n')
    cfg = cfgmod.load(conf)
    assert cfg.zone_dir == str(tmp_path / "etc" / "zones")
    assert cfg.zones[0].file == str(tmp_path / "etc" / "zones" / "inc.example.zone")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "pop53", "check", "-c", str(conf)], cwd="/",
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "zone inc.example. serial 1" in r.stdout


def test_the_compiler_child_gets_the_zone_dir(tmp_path, monkeypatch):
    from pop53.zone.compiler import compile_files_isolated
    from pop53.zone.images import load_image
    main = _tree(tmp_path / "zones")
    monkeypatch.chdir("/")
    out = tmp_path / "x.img"
    result = compile_files_isolated([(str(main), "inc.example.")], str(out), skip_bad=True,
                                    include_dir=str(tmp_path / "zones"))
    assert result["failed"] == {}
    assert len(result["loaded"]["inc.example."]["files"]) == 3
    assert load_image(out).zones() == {"inc.example.": 1}
