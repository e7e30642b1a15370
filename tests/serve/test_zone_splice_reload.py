"""Issue 14 point 2, the leftovers: a big changed zone, zones added or removed by a config reload
and SERVFAIL stand-ins are spliced into the served image whole (serve/zonesplice.py) instead of
recompiling the zone set; the answers are byte for byte those of a full compile of the same
files (every name and type of every zone), and only the zones concerned are parsed."""
from __future__ import annotations

import pytest

from pop53 import config as cfgmod
from pop53.serve import zonepatch, zonesplice
from pop53.serve.server import Server
from pop53.zone.compiler import compile_zone_data, failed_zone
from pop53.zone.zonefile import load_zone_file
from tests.zone.test_splice import answers as splice_answers

N = 30
TYPES = ("SOA", "NS", "A", "MX", "TXT", "CNAME", "ANY")
BIG = "big.test."


def zone_text(name: str, serial: int, extra: str = "", hosts: int = 3) -> str:
    return (f"$ORIGIN {name}\n$TTL 300\n@ IN SOA ns1 hostmaster {serial} 3600 600 86400 300\n"
            f"@ IN NS ns1\nns1 IN A 192.0.2.1\n@ IN MX 10 mail\nmail IN A 192.0.2.20\n"
            f"www IN CNAME @\nsub IN NS ns.sub\nns.sub IN A 203.0.113.1\n"
            + "".join(f"h{j} IN A 198.51.100.{j % 250}\n" for j in range(hosts)) + extra)


@pytest.fixture
def small_patch_limit(monkeypatch):
    # "big" here is over 2 kB, so the child-compile path runs on a small file (the default
    # limit is 1 MiB; the bench runs a million-record zone)
    monkeypatch.setattr(zonepatch, "PATCH_BYTES", 2000)
    monkeypatch.setattr(zonesplice, "CHILD_BYTES", 2000)


def zone_entry(tmp_path, name: str) -> dict:
    return {"name": name, "file": str(tmp_path / f"{name}zone")}


def make_server(tmp_path, names, bad=()) -> Server:
    for name in names:
        text = zone_text(name, 1, hosts=200 if name == BIG else 3)
        (tmp_path / f"{name}zone").write_text(text + ("x IN A nope\n" if name in bad else ""))
    s = Server(config(tmp_path, names))
    s.zones.load_first()
    return s


def config(tmp_path, names):
    return cfgmod.from_dict({"server": {"listen": ["127.0.0.1:0"], "workers": 1,
                                        "zone_dir": str(tmp_path)},
                             "zone": [zone_entry(tmp_path, n) for n in names]}, file="<test>")


def names_of(n: int) -> list[str]:
    return [f"z{i:03d}.test." for i in range(n)]


NAMES = ("@", "www", "mail", "h1", "h150", "new", "x.sub", "nope")


def answers(image, zones) -> list[bytes]:
    """Every reply for NAMES x TYPES in these zones (tests/zone/test_splice.answers)."""
    return splice_answers(image, zones, NAMES, TYPES)


def assert_as_full_compile(s, tmp_path, zones, failed=()):
    datas = [load_zone_file(tmp_path / f"{z}zone", z, str(tmp_path)) for z in zones
             if z not in failed] + [failed_zone(z) for z in failed]
    full = compile_zone_data(datas, seed=s.current_image.view.seed, expired=list(failed))
    asked = zones + ["gone.test.", "z000.test."]
    assert answers(s.current_image, asked) == answers(full, asked)
    assert s.current_image.zones() == full.zones()


def test_a_big_changed_zone_is_compiled_alone_and_spliced(tmp_path, small_patch_limit):
    zones = names_of(N) + [BIG]
    s = make_server(tmp_path, zones)
    parsed = s.zones.counts["parsed"]
    (tmp_path / f"{BIG}zone").write_text(zone_text(BIG, 2, "new IN A 192.0.2.99\n", hosts=180))
    assert s.reload() is True
    assert s.zones.counts["parsed"] == parsed + 1 and s.zones.counts["spliced"] == 1
    assert s.zone_serials[BIG] == 2 and s.zone_serials["z003.test."] == 1
    assert_as_full_compile(s, tmp_path, zones)
    # and a small one after it is compiled alone in-process and spliced too
    (tmp_path / "z003.test.zone").write_text(zone_text("z003.test.", 2, "new IN A 192.0.2.9\n"))
    assert s.reload() is True and s.zones.counts["spliced"] == 2
    assert s.zones.counts["patched"] == 0 and s.zones.counts["parsed"] == parsed + 2
    assert_as_full_compile(s, tmp_path, zones)


def test_zones_added_and_removed_by_config_reload_are_spliced(tmp_path, small_patch_limit):
    zones = names_of(N) + [BIG]
    s = make_server(tmp_path, zones)
    parsed = s.zones.counts["parsed"]
    (tmp_path / "new.test.zone").write_text(zone_text("new.test.", 7))
    now = [z for z in zones if z not in ("z000.test.", "z017.test.")] + ["new.test."]
    s.config.zones = config(tmp_path, now).zones
    assert s.reload() is True
    assert s.zones.counts["parsed"] == parsed + 1 and s.zones.counts["spliced"] == 1
    assert set(s.zone_serials) == set(now) and s.zone_serials["new.test."] == 7
    assert_as_full_compile(s, tmp_path, now)


def test_stand_ins_are_spliced_in_and_out(tmp_path, small_patch_limit):
    zones = names_of(N)
    s = make_server(tmp_path, zones, bad=("z005.test.",))
    assert "z005.test." in s.zones.failed
    # a new zone that does not load joins as a SERVFAIL stand-in; the others are untouched
    (tmp_path / "new.test.zone").write_text(zone_text("new.test.", 1) + "bad IN MX x\n")
    s.config.zones = config(tmp_path, zones + ["new.test."]).zones
    assert s.reload() is False
    assert set(s.zones.failed) == {"z005.test.", "new.test."} and s.zones.counts["spliced"] == 1
    assert_as_full_compile(s, tmp_path, zones + ["new.test."], failed=("z005.test.", "new.test."))
    # both fixed: spliced in, nothing else parsed
    parsed = s.zones.counts["parsed"]
    (tmp_path / "new.test.zone").write_text(zone_text("new.test.", 2))
    (tmp_path / "z005.test.zone").write_text(zone_text("z005.test.", 3))
    assert s.reload() is True
    assert s.zones.counts["parsed"] == parsed + 2 and not s.zones.failed
    assert s.zones.counts["spliced"] == 3
    assert s.zone_serials["z005.test."] == 3 and s.zone_serials["new.test."] == 2
    assert_as_full_compile(s, tmp_path, zones + ["new.test."])


def test_a_big_zone_that_breaks_keeps_its_version(tmp_path, small_patch_limit):
    zones = names_of(5) + [BIG]
    s = make_server(tmp_path, zones)
    (tmp_path / f"{BIG}zone").write_text(zone_text(BIG, 2, "bad IN A nope\n", hosts=200))
    assert s.reload() is False
    assert s.zone_serials[BIG] == 1 and s.zones.served(BIG)
    (tmp_path / f"{BIG}zone").write_text(zone_text(BIG, 1, hosts=200))
    assert_as_full_compile(s, tmp_path, zones)
