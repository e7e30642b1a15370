"""Issue 14 point 2: a reload compiles only the zones whose files changed.

One changed zone among many is the only one parsed again (ZoneSet.counts) and is spliced into
the served image (serve/zonesplice.py), or, with the splice turned off here, patched name by name
(serve/zonepatch.py, what a splice turns down); the answers are byte for byte those of a full compile of the same files, for
every name and type of every zone (cross-zone additional-section targets included).  A changed
$INCLUDE counts as a change; a zone that breaks keeps its previous version.
"""
from __future__ import annotations

import dns.message
import dns.rdatatype
import pytest

from pop53 import _core, config as cfgmod
from pop53.serve import zonesplice
from pop53.serve.server import Server
from pop53.zone.compiler import compile_zone_data
from pop53.zone.zonefile import load_zone_file

N = 60
TYPES = ("SOA", "NS", "A", "AAAA", "MX", "TXT", "CNAME", "ANY")


def zone_text(i: int, serial: int, extra: str = "") -> str:
    other = f"z{(i + 1) % N:03d}.test."      # MX into the next zone: additional across zones
    return (f"$ORIGIN z{i:03d}.test.\n$TTL 300\n"
            f"@ IN SOA ns1 hostmaster {serial} 3600 600 86400 300\n@ IN NS ns1\n"
            f"ns1 IN A 192.0.2.{i % 250}\n@ IN MX 10 mail.{other}\nmail IN A 198.51.100.{i % 250}\n"
            f"www IN CNAME @\nsub IN NS ns.sub\nns.sub IN A 203.0.113.{i % 250}\n"
            f"$INCLUDE inc{i:03d}.txt\n{extra}")


def make_server(tmp_path) -> Server:
    zones = []
    for i in range(N):
        (tmp_path / f"inc{i:03d}.txt").write_text(f'txt IN TXT "v{i}"\n')
        (tmp_path / f"z{i:03d}.zone").write_text(zone_text(i, 1))
        zones.append({"name": f"z{i:03d}.test.", "file": str(tmp_path / f"z{i:03d}.zone")})
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1, "zone_dir": str(tmp_path)},
           "zone": zones}
    s = Server(cfgmod.from_dict(doc, file="<test>"))
    s.zones.load_first()
    return s


def answers(image, responder) -> list[bytes]:
    out = []
    for i in range(N):
        for name in ("@", "www", "mail", "ns1", "txt", "new", "gone", "x.sub", "nope"):
            qname = f"z{i:03d}.test." if name == "@" else f"{name}.z{i:03d}.test."
            for t in TYPES:
                q = dns.message.make_query(qname, t)
                q.id = 4242
                out.append(_core.answer(image.view, q.to_wire(), responder, True)[1])
    return out


def full_compile(tmp_path, seed) -> object:
    datas = [load_zone_file(tmp_path / f"z{i:03d}.zone", f"z{i:03d}.test.", str(tmp_path))
             for i in range(N)]
    return compile_zone_data(datas, seed=seed)


def seed_of(image) -> int:
    return image.view.seed


@pytest.fixture
def name_patch(monkeypatch):
    """The splice turned down, as for a change it cannot take: the name-by-name patch runs."""
    def refused(*_a, **_k):
        return None
    refused.last_reason = "turned off by the test"
    monkeypatch.setattr(zonesplice, "splice", refused)


def test_a_target_crossing_zones_is_spliced(tmp_path):
    s = make_server(tmp_path)
    # zone 7's MX names a host of zone 8, zone 6's names zone 7's: both lists rewritten
    (tmp_path / "z007.zone").write_text(
        zone_text(7, 2, "new IN A 192.0.2.99\n").replace("mail IN A", "; mail IN A"))
    assert s.reload() is True
    assert s.zones.counts == {"parsed": N + 1, "patched": 0, "spliced": 1}
    assert answers(s.current_image, s.responder) == \
        answers(full_compile(tmp_path, seed_of(s.current_image)), s.responder)


def test_one_changed_zone_is_the_only_one_parsed_and_answers_as_a_full_compile(tmp_path,
                                                                                name_patch):
    s = make_server(tmp_path)
    assert s.zones.counts == {"parsed": N, "patched": 0, "spliced": 0}
    # zone 7 changes: serial, a name added, one removed (mail), the MX target elsewhere
    (tmp_path / "z007.zone").write_text(
        zone_text(7, 2, "new IN A 192.0.2.99\nnew IN AAAA 2001:db8::99\n").replace(
            "mail IN A", "; mail IN A"))
    assert s.reload() is True
    assert s.zones.counts == {"parsed": N + 1, "patched": 1, "spliced": 0}
    assert s.zone_serials["z007.test."] == 2 and s.zone_serials["z008.test."] == 1
    assert answers(s.current_image, s.responder) == \
        answers(full_compile(tmp_path, seed_of(s.current_image)), s.responder)
    # nothing changed: nothing parsed, nothing published
    gen = s.slot.generation
    assert s.reload() is True
    assert s.zones.counts == {"parsed": N + 1, "patched": 1, "spliced": 0} and s.slot.generation == gen


def test_a_changed_include_is_a_change(tmp_path, name_patch):
    s = make_server(tmp_path)
    (tmp_path / "inc011.txt").write_text('txt IN TXT "changed"\n')
    (tmp_path / "z011.zone").write_text(zone_text(11, 5))
    assert s.reload("z011.test.") is True
    assert s.zones.counts["parsed"] == N + 1 and s.zones.counts["patched"] == 1
    q = dns.message.make_query("txt.z011.test.", "TXT")
    r = dns.message.from_wire(_core.answer(s.current_image.view, q.to_wire(), s.responder, True)[1])
    assert [rd.strings for rd in r.answer[0]] == [(b"changed",)]
    # the include alone changes (same serial is only a warning by default)
    (tmp_path / "inc011.txt").write_text('txt IN TXT "again"\n')
    (tmp_path / "z011.zone").write_text(zone_text(11, 6))
    assert s.reload() is True and s.zones.counts["parsed"] == N + 2
    assert answers(s.current_image, s.responder) == \
        answers(full_compile(tmp_path, seed_of(s.current_image)), s.responder)


def test_a_broken_changed_zone_keeps_its_previous_version(tmp_path):
    s = make_server(tmp_path)
    (tmp_path / "z003.zone").write_text(zone_text(3, 2, "bad IN A not-an-address\n"))
    (tmp_path / "z004.zone").write_text(zone_text(4, 2))
    assert s.reload() is False
    assert "z003.zone" in s.last_error
    assert s.zone_serials["z003.test."] == 1 and s.zone_serials["z004.test."] == 2
    assert s.zones.served("z003.test.")
    # fixed later: loads
    (tmp_path / "z003.zone").write_text(zone_text(3, 3))
    assert s.reload() is True and s.zone_serials["z003.test."] == 3


@pytest.mark.parametrize("change", ["add", "remove"])
def test_a_zone_set_change_compiles_in_full(tmp_path, change):
    s = make_server(tmp_path)
    cfg = s.config
    if change == "remove":
        cfg.zones = cfg.zones[1:]
    else:
        (tmp_path / "extra.zone").write_text(zone_text(0, 1).replace("z000.test.", "extra.test."))
        cfg.zones = cfg.zones + [cfgmod.from_dict(
            {"server": {"listen": ["127.0.0.1:0"]},
             "zone": [{"name": "extra.test.", "file": str(tmp_path / "extra.zone")}]},
            file="<t>").zones[0]]
    assert s.reload() is True
    assert s.zones.counts["patched"] == 0
    assert ("z000.test." in s.zone_serials) is (change == "add")
    assert ("extra.test." in s.zone_serials) is (change == "add")


def test_with_transfers_on_only_the_changed_zone_is_parsed_again(tmp_path):
    """A server with transfers (the engine owns the image): a reload reads again only the file
    zones whose files changed; the others keep their parsed version."""
    from pop53.xfr import secondary

    s = make_server(tmp_path)      # writes the files
    doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1, "zone_dir": str(tmp_path)},
           "zone": [{"name": z.name, "file": z.file, "allow_transfer": ["127.0.0.1"]}
                    for z in s.config.zones]}
    server, service = secondary.build(cfgmod.from_dict(doc, file="<test>"))
    assert service is not None and server.zones.counts["parsed"] == N
    (tmp_path / "z005.zone").write_text(zone_text(5, 9))
    assert server.reload() is True
    assert server.zones.counts["parsed"] == N + 1
    assert server.zone_serials["z005.test."] == 9 and server.zone_serials["z006.test."] == 1
    assert answers(server.current_image, server.responder) == \
        answers(full_compile(tmp_path, server.current_image.view.seed), server.responder)
