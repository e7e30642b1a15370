"""Issue 14 point 7: one config schema for `check` and `serve`; typos rejected with the key path
and a "did you mean" hint, one line, no traceback.  Point 14: docs/config.md is generated from
the schema and current."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pop53 import config, schema
from pop53.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
ZONE = REPO / "src" / "pop53" / "data" / "example.com.zone"

GOOD = f"""
[server]
listen = ["127.0.0.1:0"]
workers = 1
[[zone]]
name = "example.com."
file = "{ZONE}"
"""

# (TOML appended to GOOD or replacing it, the key path, the hint)
TYPOS = [
    ('[[zones]]\nname = "a."\nfile = "x"\n', "zones", "unknown table [[zones]]; did you mean [[zone]]?"),
    ("[rlr]\nrate = 5\n", "rlr", "unknown table [rlr]; did you mean [rrl]?"),
    ("[xfr]\nmax_record = 5\n", "xfr.max_record", 'unknown key; did you mean "max_records"?'),
    ("[rrl]\nrate = 5\nburst = 9\n", "rrl.burst", "unknown key (known: exempt, ipv4_prefix"),
    ('[[zone]]\nname = "b.example."\nfiel = "b.zone"\n', "zone[1].fiel",
     'unknown key; did you mean "file"?'),
    ("[[rrl]]\nrate = 5\n", "rrl", "use [rrl] (one table), not [[rrl]]"),
    ("[[xfr]]\nrole = \"normal\"\n", "xfr", "use [xfr] (one table), not [[xfr]]"),
]


def _doc(extra: str) -> dict:
    import tomllib
    return tomllib.loads(GOOD + extra)


@pytest.mark.parametrize("extra,key,hint", TYPOS)
def test_typo_rejected_with_key_path_and_hint(extra, key, hint):
    with pytest.raises(ConfigError) as err:
        config.from_dict(_doc(extra), file="pop53.toml")
    assert err.value.key == key
    assert str(err.value) == f"pop53.toml:{key}: {err.value.message}"
    assert hint in err.value.message


def test_server_key_in_the_wrong_table_says_where_it_belongs():
    doc = _doc("")
    doc["server"]["role"] = "delayed"
    with pytest.raises(ConfigError) as err:
        config.from_dict(doc, file="pop53.toml")
    assert err.value.key == "server.role" and "belongs in [xfr]" in str(err.value)


def test_a_zone_table_instead_of_an_array():
    with pytest.raises(ConfigError) as err:
        config.from_dict({"zone": {"name": "a.", "file": "x"}})
    assert err.value.key == "zone" and "use [[zone]]" in str(err.value)


def test_every_xfr_setting_is_declared_with_its_default():
    """The transfer keys are parsed in pop53.xfr; the schema declares the same names and
    defaults (a key added there without a declaration would be rejected as unknown)."""
    from pop53.xfr import config as xfr
    declared = schema.SCHEMA.tables["xfr"].keys
    fields = {f.name: f.default for f in dataclasses.fields(xfr.XfrConfig)
              if f.name not in ("state", "zones", "keys")}
    assert set(declared) == set(fields)
    for name, default in fields.items():
        assert declared[name].default == default, name
    assert xfr.ZONE_KEYS <= set(schema.SCHEMA.tables["zone"].keys)


def test_every_server_setting_is_declared():
    cfg_fields = {f.name for f in dataclasses.fields(config.Config)}
    declared = set(schema.SCHEMA.tables["server"].keys)
    # Config fields that are not [server] keys: derived or from other tables
    assert cfg_fields - declared == {"rrl", "scoring", "mapping", "zones", "source", "doc", "log_format", "log_level"}


def test_a_table_registers_its_keys():
    """The extension point other tables use ([[map]], [[target]], ...): declare and validate."""
    s = schema.SCHEMA
    t = s.table("test_only_map", array=True, doc="a test table")
    try:
        t.key("name", "string", schema.REQUIRED, "its name").key("targets", "list", [], "x")
        schema.validate({"test_only_map": [{"name": "m", "targets": []}]})
        with pytest.raises(ConfigError) as err:
            schema.validate({"test_only_map": [{"name": "m", "target": []}]}, "f.toml")
        assert err.value.key == "test_only_map[0].target" and 'did you mean "targets"' in str(err.value)
        assert "## `[[test_only_map]]`" in schema.markdown()
        with pytest.raises(ValueError):
            t.key("name", "string", None, "again")
    finally:
        del s.tables["test_only_map"]


def _run(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "pop53", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", ["check", "serve"])
def test_check_and_serve_reject_the_same_typo_in_one_line(tmp_path, command):
    # a file zone only: before the schema, `serve` never looked at [xfr] (no transfers) while
    # `check` rejected it; now both reject it the same way
    conf = tmp_path / "pop53.toml"
    conf.write_text(GOOD + "[xfr]\nmax_recrods = 5\n")
    r = _run(command, "-c", str(conf), cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"{conf}:xfr.max_recrods: unknown key; did you mean \"max_records\"?" in lines[0]


def test_config_reference_is_generated_and_current():
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == schema.markdown(), \
        "docs/config.md is stale: python3 -m pop53.schema > docs/config.md"
    for table in schema.SCHEMA.tables.values():
        for key in table.keys:
            assert f"| `{key}` |" in committed
