"""Bad input: malformed map files are rejected with file:line (bad prefix, host bits, unknown
region, duplicate with a conflicting region, a million-line file with one bad line at the
end), bad [[map]]/[[target]]/[[mapped]] tables name the key, `pop53 check` reports them, and a
malformed ECS option in a query stays FORMERR with mapping on."""
from __future__ import annotations

import os
import subprocess
import sys

import dns.message
import pytest

from pop53 import _core
from pop53.errors import ConfigError
from pop53.mapping.config import parse
from pop53.mapping.mapfile import compile_map, load_map

from .mapkit import Mapping, image


@pytest.mark.parametrize("line,msg", [
    ("10.0.0.1/8 eu", "host bits set"),
    ("10.0.0.0/33 eu", "length must be 0..32"),
    ("10.0.0/8 eu", "not an IPv4 address"),
    ("2001:db8::/129 eu", "length must be 0..128"),
    ("2001:db8::1:0/96 eu", "host bits set beyond /96"),
    ("10.0.0.0/8", "expected \"PREFIX REGION\""),
    ("10.0.0.0/8 eu extra", "expected \"PREFIX REGION\""),
    ("10.0.0.0/x eu", "length must be"),
    ("10.2.0.0/16 mars", "unknown region 'mars'"),
    ("10.1.0.0/16 us", "duplicate prefix with a different region"),
])
def test_map_line_errors_name_file_and_line(line, msg):
    lines = ["# a map", "10.1.0.0/16 eu", "", line]
    with pytest.raises(ConfigError) as exc:
        compile_map(lines, "maps/world.map", "us", ["eu", "us"])
    assert str(exc.value).startswith("maps/world.map:4: ") and msg in str(exc.value)


def test_same_duplicate_is_accepted():
    t = compile_map(["10.0.0.0/8 eu", "10.0.0.0/8 eu"], "w.map", "us")
    assert list(t.lo4) == [0, 10 << 24, 11 << 24]


def test_a_million_lines_with_one_bad_line_at_the_end(tmp_path):
    path = tmp_path / "big.map"
    with open(path, "w") as f:
        for i in range(1_000_000):
            f.write(f"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24 r{i % 7}\n")
        f.write("10.0.0.1/8 r1\n")
    with pytest.raises(ConfigError) as exc:
        load_map(str(path), "r0")
    assert str(exc.value).startswith(f"{path}:1000001: ") and "host bits" in str(exc.value)


def test_unreadable_and_binary_map_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read map file"):
        load_map(str(tmp_path / "missing.map"), "us")
    p = tmp_path / "bin.map"
    p.write_bytes(b"10.0.0.0/8 eu\n\xff\xfe\x00\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_map(str(p), "us")


BASE = {"map": [{"name": "m", "file": "m.map", "default": "us"}],
        "target": [{"name": "t", "addresses": ["192.0.2.1"], "host": "h.cdn.example."}],
        "mapped": [{"name": "www.cdn.example.", "map": "m", "regions": {"us": ["t"]}}]}


@pytest.mark.parametrize("path,value,key,msg", [
    (("map", 0, "key"), "ecs_first", "map[0].key", "one of"),
    (("map", 0, "ecs_trust"), ["10.0.0.1/8"], "map[0].ecs_trust[0]", "not a prefix"),
    (("map", 0, "ecs_max_v4"), 33, "map[0].ecs_max_v4", "0..32"),
    (("map", 0, "bogus"), 1, "map[0]", "unknown key"),
    (("target", 0, "addresses"), ["300.1.1.1"], "target[0].addresses[0]", "not an IP"),
    (("mapped", 0, "map"), "nope", "mapped[0].map", "no [[map]]"),
    (("mapped", 0, "name"), "www.elsewhere.example.", "mapped[0].name", "no served zone"),
    (("mapped", 0, "regions"), {"us": ["ghost"]}, "mapped[0].regions.us[0]", "no [[target]]"),
    (("mapped", 0, "type"), "MX", "mapped[0].type", "one of"),
    (("mapped", 0, "fallback"), ["eu"], "mapped[0].fallback[0]", "has no targets"),
    (("mapped", 0, "all_down"), "panic", "mapped[0].all_down", "one of"),
    (("mapped", 0, "selection"), "random", "mapped[0].selection", "one of"),
    (("mapped", 0, "sticky_v4"), 33, "mapped[0].sticky_v4", "0..32"),
    (("target", 0, "weight"), 0, "target[0].weight", "1..65535"),
    (("mapped", 0, "ttl"), -1, "mapped[0].ttl", "within"),
])
def test_config_errors_name_the_key(path, value, key, msg):
    import copy
    doc = copy.deepcopy(BASE)
    doc[path[0]][path[1]][path[2]] = value
    with pytest.raises(ConfigError) as exc:
        parse(doc, "pop53.toml", zones=["cdn.example."])
    assert str(exc.value).startswith(f"pop53.toml:{key}: ") and msg in str(exc.value)


def test_mapped_name_below_a_mapped_delegation_is_rejected():
    import copy
    doc = copy.deepcopy(BASE)
    doc["mapped"].append({"name": "cdn.cdn.example.", "map": "m", "type": "NS",
                          "regions": {"us": ["t"]}})
    doc["mapped"].append({"name": "a.cdn.cdn.example.", "map": "m", "regions": {"us": ["t"]}})
    with pytest.raises(ConfigError, match=r"mapped\[2\].name: .* below the mapped delegation"):
        parse(doc, "pop53.toml", zones=["cdn.example."])


def test_region_without_targets_is_rejected():
    m = Mapping.__new__(Mapping)
    with pytest.raises(ConfigError, match="region 'eu' of map 'm' has no targets"):
        Mapping.__init__(m, ["10.0.0.0/8 eu"], "us", {"t": ["192.0.2.1"]},
                         [{"name": "www.cdn.example.", "regions": {"us": ["t"]}}])


@pytest.mark.parametrize("ecs_hex", [
    "0001200a0000",          # /32 with two address bytes
    "00011800c0000201",      # /24 with four bytes
    "0001170a0001ff",        # /23 with bits set beyond the prefix
    "0003080a",              # unknown family
    "000121000a000000",      # /33
    "0001180a0a000000",      # scope != 0 in a query... and 4 bytes
    "000118",                # shorter than 4
])
def test_malformed_ecs_stays_formerr_with_mapping(ecs_hex):
    m = Mapping(["10.0.0.0/8 eu"], "us", {"t": ["192.0.2.1"], "u": ["192.0.2.2"]},
                [{"name": "www.cdn.example.", "regions": {"us": ["t"], "eu": ["u"]}}])
    q = dns.message.make_query("www.cdn.example.", "A", use_edns=0,
                               options=[dns.edns.GenericOption(8, bytes.fromhex(ecs_hex))])
    act, wire = _core.answer(image().view, q.to_wire(), _core.Responder(), False,
                             ("10.0.0.1", 53), m.snap)
    r = dns.message.from_wire(wire)
    assert r.rcode() == dns.rcode.FORMERR and not r.answer


def test_pop53_check_reports_a_bad_map(tmp_path):
    (tmp_path / "z.zone").write_text(
        "$ORIGIN cdn.example.\n@ 3600 SOA ns1 h 1 2 3 4 5\n@ 3600 NS ns1\nns1 3600 A 192.0.2.1\n"
        "www 3600 CNAME elsewhere.example.\n")
    (tmp_path / "m.map").write_text("10.0.0.0/8 us\n10.1.0.0/16 us\n10.1.2.3/24 us\n")
    toml = tmp_path / "pop53.toml"
    toml.write_text('[[zone]]\nname = "cdn.example."\nfile = "z.zone"\n'
                    '[[map]]\nname = "m"\nfile = "m.map"\ndefault = "us"\n'
                    '[[target]]\nname = "t"\naddresses = ["192.0.2.1"]\n'
                    '[[mapped]]\nname = "www.cdn.example."\nmap = "m"\nregions = { us = ["t"] }\n')
    env = dict(os.environ)
    run = lambda: subprocess.run([sys.executable, "-m", "pop53", "check", "-c", str(toml)],  # noqa: E731
                                 capture_output=True, text=True, env=env, timeout=60)
    p = run()
    assert p.returncode == 1 and f"{tmp_path / 'm.map'}:3: bad prefix" in p.stderr
    (tmp_path / "m.map").write_text("10.0.0.0/8 us\n")
    p = run()   # CNAME exclusivity (RFC 2181 §10.1): a static CNAME where A/AAAA are mapped
    assert p.returncode == 1 and "has static CNAME" in p.stderr and "mapped[0].name" in p.stderr
    (tmp_path / "z.zone").write_text(
        "$ORIGIN cdn.example.\n@ 3600 SOA ns1 h 1 2 3 4 5\n@ 3600 NS ns1\nns1 3600 A 192.0.2.1\n")
    p = run()
    assert p.returncode == 0, p.stderr
    assert "map m: 1 prefixes" in p.stdout and "1 mapped name(s)" in p.stdout


def test_snapshot_validation_rejects_what_could_hang_or_overread():
    """MapSnapshot checks every offset, index and count before a worker may read it."""
    m = Mapping(["10.0.0.0/8 eu"], "us", {"t": ["192.0.2.1"], "u": ["192.0.2.2"]},
                [{"name": "www.cdn.example.", "regions": {"us": ["t"], "eu": ["u"]}}])
    blob, res, rtab, keys, views = m.snap.refs
    assert len(views[0][0]) == 3
    bad = [
        (blob, res, b"\x01\x00\x00\x00" * 8, 0, 0, keys, views),          # a full table: no end
        (blob, res, rtab, 0, 0, bytes([0, 40]) + keys[2:], views),          # ecs_max_v4 > 32
        (blob, res, rtab, 0, 0, bytes([0, 24, 56, 33]) + keys[4:], views),  # 33 trusted prefixes
        (blob[:8], res, rtab, 0, 0, keys, views),                           # answers out of bounds
        (blob, res, rtab, 0, 0, keys, [views[0][:8] + (99,)] + views[1:]),  # default out of range
        (blob, res, rtab, 0, 0, keys, [(views[0][0][[0, 2, 1]].copy(),) + views[0][1:]] + views[1:]),
        (blob, res, rtab, 0, 0, keys, [views[0][:1] + (views[0][1] + 7,) + views[0][2:]] + views[1:]),
    ]
    for args in bad:
        with pytest.raises(ValueError):
            _core.MapSnapshot(*args)


def test_sticky_without_a_choice_is_rejected():
    import copy
    doc = copy.deepcopy(BASE)
    doc["mapped"][0].update(selection="sticky", select=0)
    with pytest.raises(ConfigError, match=r"mapped\[0\].select: .*give select >= 1"):
        parse(doc, "pop53.toml", zones=["cdn.example."])
