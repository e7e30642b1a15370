"""Online signing in process (pop53/dnssec/online.py, keys.py): the data plane only copies the
RRSIG made at snapshot build time (the count of signatures made does not grow with queries);
every variant the snapshot can return is signed and verifies; DO=0 answers carry no RRSIG;
signatures are cached by content and renewed when their refresh time comes; bad key files are
one-line errors naming the file."""
from __future__ import annotations

import dataclasses
import subprocess
import tomllib

import dns.dnssec
import dns.edns
import dns.message
import dns.name
import dns.rdatatype
import pytest

from pop53 import _core, compile_zones
from pop53.dnssec import keys as dkeys
from pop53.dnssec import online
from pop53.errors import ConfigError
from pop53.mapping import config as mconfig
from pop53.mapping.service import MappingState
from signing import sign
from test_online_signing import CONFIG, MAP, ORIGIN, ZONE, keygen

CLIENT = b"\x7f\x00\x00\x01"


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def signed_setup(d):
    """The test zone signed with the keys in d/keys, its map and config; (mapping, image)."""
    (d / "cdn.zone").write_text(ZONE)
    sign(d / "cdn.zone", d / "keys", d / "cdn.signed", "nsec", ORIGIN)
    (d / "world.map").write_text(MAP)
    (d / "pop53.toml").write_text(CONFIG.format(ctl=d / "ctl.sock"))
    doc = tomllib.loads(CONFIG.format(ctl=d / "ctl.sock"))
    mcfg = mconfig.parse(doc, str(d / "pop53.toml"), str(d), zones=[ORIGIN])
    return mcfg, compile_zones([(str(d / "cdn.signed"), ORIGIN)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("online-inproc")
    keygen(d / "keys", "p256")
    return (d, *signed_setup(d))


def make_state(d, mcfg, image, clock, validity=3600, refresh=600):
    ks = dkeys.zone_signing_keys(dkeys.load_dir(str(d / "keys"), dns.name.from_text(ORIGIN)))
    signer = online.OnlineSigner([online.ZoneSigning(dns.name.from_text(ORIGIN), ks, validity,
                                                     refresh)], clock=clock)
    state = MappingState(mcfg, None, signer)
    state.publish(image.view.seed)
    return state, signer


def ask(image, snap, name, qtype, ecs=None, do=True):
    opts = [dns.edns.ECSOption(*ecs)] if ecs else []
    q = dns.message.make_query(name, qtype, want_dnssec=do, options=opts)
    _, wire = _core.answer(image.view, q.to_wire(), _core.Responder(), False, CLIENT, snap)
    return dns.message.from_wire(wire)


def test_queries_never_sign_and_every_variant_verifies(setup):
    d, mcfg, image = setup
    import time
    state, signer = make_state(d, mcfg, image, Clock(time.time()))
    snap = state.snapshot
    made = signer.made
    # distinct answers: e1 A eu/us, e1 AAAA eu (us has none: NODATA), www CNAME eu/us
    assert made == 5
    zone_keys = {dns.name.from_text(ORIGIN): ask(image, snap, ORIGIN, "DNSKEY").answer[0]}
    seen = set()
    for i in range(300):
        ecs = (f"10.{i % 256}.0.0", 16) if i % 2 else (f"192.0.{i % 256}.0", 24)
        for name, qtype in (("e1." + ORIGIN, "A"), ("e1." + ORIGIN, "AAAA"), ("www." + ORIGIN, "CNAME")):
            r = ask(image, snap, name, qtype, ecs)
            rrs = [x for x in r.answer if x.rdtype != dns.rdatatype.RRSIG]
            if not rrs:                 # us has no IPv6 target: NODATA with the NSEC proof
                assert r.authority and any(x.rdtype == dns.rdatatype.NSEC for x in r.authority)
                continue
            sig = r.find_rrset(r.answer, rrs[0].name, 1, dns.rdatatype.RRSIG, rrs[0].rdtype)
            if i < 4:
                dns.dnssec.validate(rrs[0], sig, zone_keys)
            seen.add(rrs[0].to_text())
    assert len(seen) == 5
    assert signer.made == made, "a query made a signature"
    # without DO nothing changes: no RRSIG
    r = ask(image, snap, "e1." + ORIGIN, "A", ("10.0.0.0", 8), do=False)
    assert r.answer and all(x.rdtype != dns.rdatatype.RRSIG for x in r.answer)


def test_cache_by_content_and_renewal(setup):
    d, mcfg, image = setup
    clock = Clock(1_900_000_000)
    state, signer = make_state(d, mcfg, image, clock, validity=3600, refresh=600)
    assert signer.made == 5 and signer.next_refresh() == clock.t + 3000
    state.set_target("eu1", False)      # eu's answers become us's: nothing new to sign
    assert signer.made == 5
    state.set_target("eu1", True)       # back: signatures of the dropped answers are made again
    assert signer.made == 8             # e1 A, e1 AAAA and www CNAME of eu
    clock.t += 2999
    state.publish()
    assert signer.made == 8             # more than `refresh` left: reused
    clock.t += 2
    state.publish()
    assert signer.made == 13            # renewed
    r = ask(image, state.snapshot, "e1." + ORIGIN, "A", ("10.0.0.0", 8))
    sig = r.find_rrset(r.answer, dns.name.from_text("e1." + ORIGIN), 1, dns.rdatatype.RRSIG,
                       dns.rdatatype.A)
    assert sig[0].expiration == clock.t + 3600 and sig[0].inception == clock.t - online.SKEW


def test_bad_key_files_are_one_line_errors(tmp_path):
    k = tmp_path / "k"
    k.mkdir()
    with pytest.raises(ConfigError, match="no Kcdn.example"):
        dkeys.load_dir(str(k), dns.name.from_text(ORIGIN))
    subprocess.run(["dnssec-keygen", "-q", "-K", str(k), "-a", "ECDSAP384SHA384", ORIGIN],
                   check=True, capture_output=True)
    with pytest.raises(ConfigError, match=r"\.private: algorithm 14: only RSASHA256 \(8\)"):
        dkeys.load_dir(str(k), dns.name.from_text(ORIGIN))
    for p in k.iterdir():
        p.unlink()
    keygen(k, "p256")
    keygen(tmp_path / "other", "p256")
    # a .private that is not the .key's: every signature would be bogus
    mine = sorted(k.glob("*.private"))[0]
    mine.write_text(sorted((tmp_path / "other").glob("*.private"))[0].read_text())
    with pytest.raises(ConfigError, match="does not match the DNSKEY"):
        dkeys.load_dir(str(k), dns.name.from_text(ORIGIN))


def test_snapshot_rejects_a_bad_signature_offset(setup):
    """The snapshot is checked before a worker may read it: an RRSIG pointer that leads out of
    the arena, or to something that is not an RRSIG RRset, is refused."""
    d, mcfg, image = setup
    import time
    state, _ = make_state(d, mcfg, image, Clock(time.time()))
    blob, res, rtab, keys, views = state.snapshot.refs
    import struct
    b = bytearray(blob)
    # find a signed answer rrset: add_off (offset 16 of rrset_t) pointing at a type-46 rrset
    pos = None
    for off in range(8, len(b) - 24, 1):
        t, cnt, ttl, rdo, rdl, add, addc, aux = struct.unpack_from("<HHIIIIHH", b, off)
        if t == 1 and cnt == 1 and add and add + 24 <= len(b) and \
                struct.unpack_from("<H", b, add)[0] == 46 and addc == 0:
            pos = off
            break
    assert pos is not None
    for bad in (len(b) - 4, pos):         # out of the arena; an A rrset, not an RRSIG
        c = bytearray(b)
        struct.pack_into("<I", c, pos + 16, bad)
        with pytest.raises(ValueError):
            _core.MapSnapshot(bytes(c), res, rtab, state.snapshot.seed, 0, keys, views)


def test_sticky_variants_are_each_signed(setup):
    """A sticky resource (one of three targets per client /24) gives three answer variants in
    one region; each carries its own RRSIG made at build time, and each verifies."""
    import copy
    import time
    d, mcfg, image = setup
    cfg = copy.deepcopy(mcfg)
    t = cfg.targets
    extra = [mconfig.TargetConfig(f"eu{i}", (f"192.0.2.{20 + i}",)) for i in (2, 3)]
    cfg.targets = {**t, **{x.name: x for x in extra}}
    e1 = next(r for r in cfg.mapped if r.name == "e1." + ORIGIN)
    sticky = mconfig.MappedConfig(e1.name, e1.map, e1.ttl,
                                  (("eu", ("eu1", "eu2", "eu3")), ("us", ("us1",))), "A",
                                  e1.fallback, 1, e1.all_down, "sticky", 24, 48)
    cfg.mapped = [sticky if r is e1 else r for r in cfg.mapped]
    state, signer = make_state(d, cfg, image, Clock(time.time()))
    zone_keys = {dns.name.from_text(ORIGIN): ask(image, state.snapshot, ORIGIN, "DNSKEY").answer[0]}
    made = signer.made
    seen = {}
    for i in range(200):
        r = ask(image, state.snapshot, "e1." + ORIGIN, "A", (f"10.{i}.{i}.0", 24))
        rrs = [x for x in r.answer if x.rdtype != dns.rdatatype.RRSIG][0]
        sig = r.find_rrset(r.answer, rrs.name, 1, dns.rdatatype.RRSIG, rrs.rdtype)
        if rrs.to_text() not in seen:
            dns.dnssec.validate(rrs, sig, zone_keys)
        seen[rrs.to_text()] = True
    assert len(seen) == 3 and all(len(k.splitlines()) == 1 for k in seen)
    assert signer.made == made


def test_rrsig_query_at_a_mapped_name(setup):
    """QTYPE=RRSIG at a mapped name: the signatures of one RRset, as at a static name (Knot
    3.2 answers the first RRset's; pop53 agrees, test_signed_vs_knot.py), the RRset being the
    mapped answer this client gets, signed online: never the zone's placeholder signatures.
    A client with no mapped answer gets the name's static RRset's signatures (here the TXT)."""
    import copy
    import time
    d, mcfg, image = setup
    state, _ = make_state(d, mcfg, image, Clock(time.time()))
    snap = state.snapshot
    zone_keys = {dns.name.from_text(ORIGIN): ask(image, snap, ORIGIN, "DNSKEY").answer[0]}
    placeholder = ask(image, None, "e1." + ORIGIN, "RRSIG").answer[0]      # the zone's own
    assert placeholder.covers == dns.rdatatype.A
    for ecs in (("10.0.0.0", 8), ("192.0.2.0", 24)):
        for name, covered in (("e1." + ORIGIN, "A"), ("www." + ORIGIN, "CNAME")):
            for do in (True, False):      # RRSIG is data: answered with DO=0 too, as Knot does
                r = ask(image, snap, name, "RRSIG", ecs, do=do)
                assert [x.rdtype for x in r.answer] == [dns.rdatatype.RRSIG], r
                sig = r.answer[0]
                assert sig.covers == dns.rdatatype.from_text(covered)
                assert not set(sig) & set(placeholder)
                # the signature covers the very answer this client gets for that type
                ans = ask(image, snap, name, covered, ecs)
                rrs = ans.find_rrset(ans.answer, sig.name, 1, sig.covers)
                assert sig.ttl == rrs.ttl
                dns.dnssec.validate(rrs, sig, zone_keys)
    # every target down and all_down = "nodata": no mapped answer, the TXT's signatures
    cfg = copy.deepcopy(mcfg)
    cfg.mapped = [dataclasses.replace(r, all_down="nodata") for r in cfg.mapped]
    state, _ = make_state(d, cfg, image, Clock(time.time()))
    state.set_target("eu1", False)
    state.set_target("us1", False)
    r = ask(image, state.snapshot, "e1." + ORIGIN, "RRSIG", ("10.0.0.0", 8))
    assert [(x.rdtype, x.covers) for x in r.answer] == [(dns.rdatatype.RRSIG, dns.rdatatype.TXT)]
    txt = ask(image, state.snapshot, "e1." + ORIGIN, "TXT").answer
    dns.dnssec.validate(txt[0], r.answer[0], zone_keys)


@pytest.mark.parametrize("alg", ["RSASHA256", "RSASHA512"])
def test_rsa_bind_keys_sign_answers_that_verify(tmp_path, alg):
    """BIND-format RSA keys (RFC 5702): the keys chosen from the zone (online.choose: published,
    signing the SOA) sign the mapped answers, which verify against the served DNSKEY."""
    import time
    d = tmp_path
    (d / "keys").mkdir()
    for extra in (["-f", "KSK"], []):
        subprocess.run(["dnssec-keygen", "-q", "-K", str(d / "keys"), "-a", alg, "-b", "1024",
                        *extra, ORIGIN], check=True, capture_output=True)
    mcfg, image = signed_setup(d)
    from pop53 import config as cfgmod
    signer = online.from_config(cfgmod.load(str(d / "pop53.toml")), image)
    (z,) = signer.zones
    assert [k.ksk for k in z.keys] == [False] and len(z.read) == 2
    state = MappingState(mcfg, None, signer)
    state.publish(image.view.seed)
    zone_keys = {dns.name.from_text(ORIGIN): ask(image, state.snapshot, ORIGIN, "DNSKEY").answer[0]}
    for ecs in (("10.0.0.0", 8), ("192.0.2.0", 24)):
        r = ask(image, state.snapshot, "e1." + ORIGIN, "A", ecs)
        rrs = r.find_rrset(r.answer, dns.name.from_text("e1." + ORIGIN), 1, dns.rdatatype.A)
        sig = r.find_rrset(r.answer, rrs.name, 1, dns.rdatatype.RRSIG, dns.rdatatype.A)
        assert sig[0].algorithm == {"RSASHA256": 8, "RSASHA512": 10}[alg]
        dns.dnssec.validate(rrs, sig, zone_keys, now=time.time())
    # keys none of which the zone publishes: one error naming the directory and the key
    other = tmp_path / "other"
    keygen(other, "p256")
    cfg = cfgmod.load(str(d / "pop53.toml"))
    cfg.zones[0].raw["dnssec_keys"] = str(other)
    with pytest.raises(ConfigError, match=r"zone\[0\]\.dnssec_keys: .*other: none of its keys is "
                                          r"in the DNSKEY RRset"):
        online.from_config(cfg, image)
    # a key store file that is no key
    (other / "0123.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match=r"0123\.pem: not an unencrypted PKCS#8 PEM"):
        online.from_config(cfg, image)


def test_p256_private_key_without_leading_zero_octets(tmp_path):
    """BIND writes a P-256 private scalar with its leading zero octets dropped (a 31-byte
    PrivateKey once in 256 keys): it is the same key and must load."""
    import base64
    keygen(tmp_path, "p256")
    priv = sorted(tmp_path.glob("*.private"))[-1]
    k = dkeys.load_key(str(priv)[:-8] + ".key")
    # a key whose scalar has a zero first octet, written as BIND does, matching its DNSKEY
    from cryptography.hazmat.primitives.asymmetric import ec
    scalar = int.from_bytes(b"\x00" + bytes(range(1, 32)), "big")
    new = ec.derive_private_key(scalar, ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(new.public_key(), 13, k.dnskey.flags)
    keyfile = tmp_path / "Kcdn.example.+013+00002.key"
    keyfile.write_text(f"cdn.example. IN DNSKEY {dnskey.to_text()}\n")
    (tmp_path / "Kcdn.example.+013+00002.private").write_text(
        "Private-key-format: v1.3\nAlgorithm: 13 (ECDSAP256SHA256)\nPrivateKey: "
        + base64.b64encode(scalar.to_bytes(31, "big")).decode() + "\n")
    got = dkeys.load_key(str(keyfile))
    assert got.private.private_numbers().private_value == scalar
