"""A mapped delegation (`[[mapped]] type = "NS"`) in a signed zone: the signed zone holds the
delegation as a static one (an NS placeholder at the cut, signed by dnssec-signzone), so its
NSEC/NSEC3 record proves there is no DS (RFC 4035 §3.1.4, RFC 5155 §7.2.7).  With DO=1 the mapped
referral (NS and glue chosen by the client's network) carries that proof, signed; a DS query at
the cut is answered by the zone (NODATA with the proof); without DO nothing is added.
`pop53 check`-side: a mapped NS in a zone signed online without the placeholder is an error."""
from __future__ import annotations

import copy
import time

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
from test_online_signing import ORIGIN, keygen

ZONE = """$ORIGIN cdn.example.
$TTL 3600
@    SOA ns1 host 1 7200 3600 1209600 300
@    NS  ns1
ns1  A   192.0.2.53
w10  NS  n1.w10.cdn.example.
n1.w10 A 192.0.2.10
"""
DOC = {
    "map": [{"name": "world", "file": "world.map", "default": "us"}],
    "target": [{"name": "eu1", "addresses": ["192.0.2.10"], "host": "n1.w10.cdn.example."},
               {"name": "us1", "addresses": ["198.51.100.1"], "host": "n3.w10.cdn.example."}],
    "mapped": [{"name": "w10.cdn.example.", "map": "world", "type": "NS", "ttl": 4000,
                "regions": {"eu": ["eu1"], "us": ["us1"]}}],
}


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("online-referral")
    keygen(d / "keys", "p256")
    (d / "cdn.zone").write_text(ZONE)
    sign(d / "cdn.zone", d / "keys", d / "cdn.signed", "nsec", ORIGIN)
    (d / "world.map").write_text("10.0.0.0/8 eu\n")
    mcfg = mconfig.parse(copy.deepcopy(DOC), str(d / "pop53.toml"), str(d), zones=[ORIGIN])
    image = compile_zones([(str(d / "cdn.signed"), ORIGIN)])
    ks = dkeys.zone_signing_keys(dkeys.load_dir(str(d / "keys"), dns.name.from_text(ORIGIN)))
    signer = online.OnlineSigner([online.ZoneSigning(dns.name.from_text(ORIGIN), ks, 3600, 600)],
                                 clock=time.time)
    state = MappingState(mcfg, None, signer)
    state.publish(image.view.seed)
    return d, mcfg, image, state, signer


def ask(image, snap, name, qtype, ecs, do=True):
    q = dns.message.make_query(name, qtype, want_dnssec=do,
                               options=[dns.edns.ECSOption(*ecs)])
    _, wire = _core.answer(image.view, q.to_wire(), _core.Responder(), False, b"\x7f\0\0\1", snap)
    return dns.message.from_wire(wire)


def test_mapped_referral_carries_the_signed_no_ds_proof(signed):
    _, _, image, state, _ = signed
    keys = {dns.name.from_text(ORIGIN): ask(image, state.snapshot, ORIGIN, "DNSKEY",
                                            ("10.0.0.0", 8)).answer[0]}
    cut = dns.name.from_text("w10." + ORIGIN)
    for ecs, host in ((("10.1.0.0", 16), "n1.w10.cdn.example."),
                      (("11.0.0.0", 8), "n3.w10.cdn.example.")):
        r = ask(image, state.snapshot, "a1.w10." + ORIGIN, "A", ecs)
        ns = r.get_rrset(r.authority, cut, 1, dns.rdatatype.NS)
        assert ns is not None and [x.target.to_text() for x in ns] == [host]   # the mapped set
        nsec = r.get_rrset(r.authority, cut, 1, dns.rdatatype.NSEC)
        sig = r.get_rrset(r.authority, cut, 1, dns.rdatatype.RRSIG, dns.rdatatype.NSEC)
        assert nsec is not None and sig is not None, r.to_text()
        dns.dnssec.validate(nsec, sig, keys)
        bitmap = {t for w in nsec[0].windows for t in dns.rdtypes.util.Bitmap(
            [w]).to_text().split()}
        assert "NS" in bitmap and "DS" not in bitmap
    # without DO: the referral only
    r = ask(image, state.snapshot, "a1.w10." + ORIGIN, "A", ("10.1.0.0", 16), do=False)
    assert r.authority and all(x.rdtype == dns.rdatatype.NS for x in r.authority)


def test_ds_at_the_mapped_cut_is_answered_by_the_zone(signed):
    _, _, image, state, _ = signed
    r = ask(image, state.snapshot, "w10." + ORIGIN, "DS", ("10.1.0.0", 16))
    assert r.rcode() == 0 and not r.answer
    types = {x.rdtype for x in r.authority}
    assert dns.rdatatype.SOA in types and dns.rdatatype.NSEC in types, r.to_text()


def test_a_mapped_ns_without_its_signed_delegation_is_refused(signed, tmp_path):
    d, _, _, _, signer = signed
    (tmp_path / "cdn.zone").write_text(ZONE.replace("w10  NS  n1.w10.cdn.example.\n", "")
                                       .replace("n1.w10 A 192.0.2.10\n", ""))
    sign(tmp_path / "cdn.zone", d / "keys", tmp_path / "cdn.signed", "nsec", ORIGIN)
    image = compile_zones([(str(tmp_path / "cdn.signed"), ORIGIN)])
    mcfg = mconfig.parse(copy.deepcopy(DOC), str(d / "pop53.toml"), str(d), zones=[ORIGIN])
    with pytest.raises(ConfigError, match=r"mapped\[0\].name: .*add an NS record"):
        online.check_mapped_names(image, mcfg, signer)
