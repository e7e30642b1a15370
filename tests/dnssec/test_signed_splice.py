"""Signed zones spliced into the served image (zone/splice.py, issue 14 point 2 with issue 12):
a signed zone re-signed with names added and removed, switched from NSEC to NSEC3, its signed
child (a zone nested in it) changed, and a signed zone moved in the zone table, each compiled
alone and spliced, answer every DO=1 query of the corpus (UDP and TCP) byte for byte as a full
compile of the same zones, with signatures that verify; an unsigned zone's MX naming a host in
the signed zone gets the new host's address and signature in its additional section.

Through `pop53 serve`: `pop53 ctl reload ZONE` of the changed signed zone and of its nested
child parse that one file and splice it (the server's load counters: no other zone parsed, no
full compile), and `delv` with the zone's trust anchor validates the new answers."""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.message
import dns.name
import dns.rdatatype
import pytest

import pop53
from pop53.zone.compiler import compile_zone_data
from pop53.zone.splice import splice
from pop53.zone.zonefile import load_zone_file, zone_from_bytes

from cases import CASES, qname
from proofs import make_query, signature_problems
from signing import CHILD, ORIGIN, ZONES, sign
from tests.mapping.test_serve_e2e import Proc, ctl
from test_delv import INSECURE_OK, delv

pytestmark = pytest.mark.peers
SEED = 0x5EED5EED
# unsigned zones around the signed one; "a1" names a host of the signed zone (a target crossing
# zones); "sec.example." and its child sort after them, so removing a0 moves the child's index
UNSIGNED = {o: zone for o, zone in (
    ("a0.example.", ""), ("a1.example.", "@ MX 10 mail.sec.example.\n@ MX 20 added.sec.example.\n"),
    ("mx.example.", "host A 192.0.2.7\n"))}
EXTRA = ["added", "x.y.newent", "newent", "txt", "mail", "www.signed", "new.signed",
         "nope.signed"]


def unsigned(origin: str, extra: str):
    text = (f"$ORIGIN {origin}\n$TTL 300\n@ SOA ns1 h 1 3600 600 86400 300\n@ NS ns1\n"
            f"ns1 A 192.0.2.1\n{extra}")
    return zone_from_bytes(text.encode(), dns.name.from_text(origin), source=origin)


def parent_v2(signed, tmp_path: Path, variant: str) -> Path:
    """The parent re-signed with names added (one under a new empty non-terminal) and one
    removed ("txt"): its NSEC/NSEC3 chain gains and loses owners."""
    text = (signed["nsec"].keydir.parent / "sec.example.zone").read_text()
    text = text.replace(" 2026120301 7200 ", " 2026120302 7200 ", 1)
    text = "\n".join(l for l in text.splitlines() if not l.startswith("txt ")) + \
        "\nadded 3600 IN A 192.0.2.99\nx.y.newent 3600 IN TXT \"new\"\n"
    src = tmp_path / f"parent-{variant}.zone"
    src.write_text(text)
    return sign(src, signed[variant].keydir, tmp_path / f"parent-{variant}.signed", variant).path


def child_v2(signed, tmp_path: Path, variant: str) -> Path:
    """The child (NSEC at first) with a name added, signed with `variant`."""
    text = (ZONES / "signed.sec.example.zone").read_text()
    src = tmp_path / "child2.zone"
    src.write_text(text.replace(" 2026120301 7200 ", " 2026120302 7200 ", 1) +
                   "new  A    192.0.2.154\n")
    return sign(src, signed["child"].keydir, tmp_path / "child2.signed", variant, CHILD).path


def queries() -> list[tuple[str, str]]:
    out = [(qname(rel, ORIGIN), t) for _c, rel, t in CASES]
    out += [(qname(rel, ORIGIN), t) for rel in EXTRA for t in ("A", "TXT", "DS", "NSEC")]
    out += [(o, t) for o in UNSIGNED for t in ("MX", "SOA", "NS")]
    return out


def answers(image) -> list[bytes]:
    return [pop53.answer(image, make_query(n, t), ("127.0.0.1", 5353), tcp=tcp)
            for n, t in queries() for tcp in (False, True)]


def keys_of(image) -> dict:
    out = {}
    for origin in (ORIGIN, CHILD):
        m = dns.message.from_wire(pop53.answer(image, make_query(origin, "DNSKEY"),
                                               ("127.0.0.1", 5353), tcp=True))
        out[dns.name.from_text(origin)] = m.find_rrset(m.answer, dns.name.from_text(origin),
                                                       1, dns.rdatatype.DNSKEY)
    return out


def like_full(spliced, datas: dict) -> None:
    assert spliced is not None, splice.last_reason
    pop53._core.ImageView(bytes(spliced), True)        # the data plane's full validation
    full = compile_zone_data(list(datas.values()), seed=SEED)
    got = answers(spliced)
    assert got == answers(full)
    assert spliced.zones() == full.zones() and spliced.counts == full.counts
    keys = keys_of(spliced)
    bad = [p for raw in got for p in signature_problems(raw, keys)]
    assert not bad, bad[:5]


def alone(data):
    return compile_zone_data([data], seed=SEED)


def key(origin: str) -> bytes:
    return dns.name.from_text(origin).to_wire()


@pytest.mark.parametrize("variant", ["nsec", "nsec3", "optout"])
def test_signed_zones_spliced_like_a_full_compile(signed, tmp_path, variant):
    datas = {o: unsigned(o, x) for o, x in UNSIGNED.items()}
    datas[ORIGIN] = load_zone_file(signed[variant].path, ORIGIN)
    datas[CHILD] = load_zone_file(signed["child"].path, CHILD)
    old = compile_zone_data(list(datas.values()), seed=SEED)
    # names and chain owners added and removed in the signed parent
    datas[ORIGIN] = load_zone_file(parent_v2(signed, tmp_path, variant), ORIGIN)
    s1 = splice(old, {key(ORIGIN): alone(datas[ORIGIN])})
    like_full(s1, datas)
    assert splice.last_stats["signed"] == 1
    m = dns.message.from_wire(pop53.answer(s1, make_query("a1.example.", "MX"), ("::1", 53)))
    assert {rr.name.to_text() for rr in m.additional if rr.rdtype == dns.rdatatype.A} == \
        {"mail." + ORIGIN, "added." + ORIGIN}
    assert any(rr.rdtype == dns.rdatatype.RRSIG for rr in m.additional)
    # the signed child nested in the signed parent, changed (a name added, NSEC3 from NSEC)
    datas[CHILD] = load_zone_file(
        child_v2(signed, tmp_path, "nsec3" if variant == "nsec" else variant), CHILD)
    s2 = splice(s1, {key(CHILD): alone(datas[CHILD])})
    like_full(s2, datas)
    # a zone before them removed: the last zone (the child, its NSEC3 owners outside its
    # table) takes its slot and index
    del datas["a0.example."]
    s3 = splice(s2, {}, [key("a0.example.")])
    like_full(s3, datas)
    # and back to the first version of the parent (the other chain), spliced over the splice
    other = "nsec3" if variant == "nsec" else "nsec"
    datas[ORIGIN] = load_zone_file(signed[other].path, ORIGIN)
    like_full(splice(s3, {key(ORIGIN): alone(datas[ORIGIN])}), datas)


# -- through `pop53 serve`, `ctl reload` and delv ----------------------------------------------

CONFIG = """[server]
listen = ["127.0.0.1:0"]
workers = 1
control = "{ctl}"
zone_dir = "{d}"
"""


def loads(d) -> dict:
    return ctl(str(d), "status")["loads"]


def validated(srv_port, anchor, origin, cases) -> list[str]:
    class At:
        address = ("127.0.0.1", srv_port)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda c: delv(At, anchor, origin, c[0], c[1]), cases))
    return [f"{n} {t}: {out[:300]}" for (n, t), out in zip(cases, outs)
            if "fully validated" not in out
            and not (("optout", n.removesuffix("." + ORIGIN), t) in INSECURE_OK
                     and "unsigned answer" in out)]


def test_ctl_reload_of_a_signed_zone_splices_it_and_delv_validates(signed, tmp_path):
    if not shutil.which("delv"):
        pytest.fail("delv not found (Debian bind9-dnsutils; scripts/setup.sh installs it)")
    d = tmp_path
    variant = "nsec3"
    conf = CONFIG.format(ctl=d / "ctl.sock", d=d)
    for origin, extra in UNSIGNED.items():
        (d / f"{origin}zone").write_text(
            f"$ORIGIN {origin}\n$TTL 300\n@ SOA ns1 h 1 3600 600 86400 300\n@ NS ns1\n"
            f"ns1 A 192.0.2.1\n{extra}")
    shutil.copy(signed[variant].path, d / "parent.zone")
    shutil.copy(signed["child"].path, d / "child.zone")
    files = {**{o: f"{o}zone" for o in UNSIGNED}, ORIGIN: "parent.zone", CHILD: "child.zone"}
    for origin, f in files.items():
        conf += f'[[zone]]\nname = "{origin}"\nfile = "{d / f}"\n'
    (d / "pop53.toml").write_text(conf)
    p = Proc(["serve", "-c", "pop53.toml"], str(d))
    try:
        before = loads(d)
        shutil.copy(parent_v2(signed, tmp_path, variant), d / "parent.zone")
        assert ctl(str(d), "zone-reload", ORIGIN)["ok"] is True
        after = loads(d)
        # that file alone read and spliced: no other zone parsed, nothing compiled in full
        assert after["parsed"] == before["parsed"] + 1
        assert after["spliced"] == before["spliced"] + 1 and after["patched"] == before["patched"]
        cases = [(qname(rel, ORIGIN), t) for cat, rel, t in CASES
                 if cat != "referral" and t != "RRSIG" and (rel, t) != ("@", "DS")]
        cases += [("added." + ORIGIN, "A"), ("x.y.newent." + ORIGIN, "TXT"),
                  ("newent." + ORIGIN, "A"), ("txt." + ORIGIN, "TXT"),
                  ("new.signed." + ORIGIN, "A")]
        bad = validated(p.port, signed[variant].anchor, ORIGIN, cases)
        assert not bad, "\n".join(bad)
        # the nested signed child, changed, reloaded with every zone: it alone is read
        shutil.copy(child_v2(signed, tmp_path, "nsec"), d / "child.zone")
        assert ctl(str(d), "reload")["ok"] is True
        last = loads(d)
        assert last["parsed"] == after["parsed"] + 1 and last["spliced"] == after["spliced"] + 1
        bad = validated(p.port, signed[variant].anchor, ORIGIN,
                        [("new.signed." + ORIGIN, "A"), ("www.signed." + ORIGIN, "A"),
                         ("nope.signed." + ORIGIN, "A"), ("added." + ORIGIN, "A")])
        assert not bad, "\n".join(bad)
    finally:
        p.stop()


def test_a_signed_zone_compiled_in_the_child_is_spliced(signed, tmp_path, monkeypatch):
    """A signed zone file over CHILD_BYTES (lowered here) is compiled alone in the compiler
    child (its image streamed to a file and mapped) and spliced: answers as a full compile."""
    from pop53 import config as cfgmod
    from pop53.serve import zonesplice
    from pop53.serve.server import Server
    monkeypatch.setattr(zonesplice, "CHILD_BYTES", 2000)
    variant = "nsec3"
    files = {ORIGIN: tmp_path / "parent.zone", CHILD: tmp_path / "child.zone"}
    shutil.copy(signed[variant].path, files[ORIGIN])
    shutil.copy(signed["child"].path, files[CHILD])
    for origin, extra in UNSIGNED.items():
        files[origin] = tmp_path / f"{origin}zone"
        files[origin].write_text(f"$ORIGIN {origin}\n$TTL 300\n@ SOA ns1 h 1 3600 600 86400 300\n"
                                 f"@ NS ns1\nns1 A 192.0.2.1\n{extra}")
    s = Server(cfgmod.from_dict({"server": {"listen": ["127.0.0.1:0"], "workers": 1,
                                            "zone_dir": str(tmp_path)},
                                 "zone": [{"name": o, "file": str(f)} for o, f in files.items()]},
                                file="<test>"))
    s.zones.load_first()
    before = dict(s.zones.counts)
    shutil.copy(parent_v2(signed, tmp_path, variant), files[ORIGIN])
    assert s.reload(ORIGIN) is True
    assert s.zones.counts["spliced"] == before["spliced"] + 1
    assert s.zones.counts["parsed"] == before["parsed"] + 1
    datas = {o: load_zone_file(f, o) for o, f in files.items()}
    full = compile_zone_data(list(datas.values()), seed=s.current_image.view.seed)
    got = answers(s.current_image)
    assert got == answers(full)
    bad = [p for raw in got for p in signature_problems(raw, keys_of(s.current_image))]
    assert not bad, bad[:5]
    s.zones.stop()
