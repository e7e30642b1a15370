"""Signed zones by transfer: Knot signs the zone itself (NSEC3, ECDSA P-256) and is pop53's
primary; pop53's xfr engine takes it by AXFR and NOTIFY + IXFR and publishes images.  Every
image answers DO=1 queries with RRSIGs that verify against the DNSKEY RRset of the same image,
and the zone keeps validating through a ZSK roll that Knot runs (new key published, zone
re-signed, old key removed: each step an IXFR)."""
from __future__ import annotations

import sys
from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.rdataclass
import dns.rcode
import dns.rdatatype
import pytest

from xfr_support import free_port, wait_for

from test_image_answers import publishing_engine
from test_knot_primary import ZONE, knot_primary

pytest.importorskip("pop53._core")
import pop53  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dnssec"))
from proofs import make_query, signature_problems  # noqa: E402

pytestmark = pytest.mark.peers


# Short TTLs and delays so that the roll's steps follow each other in seconds.
POLICY = """\
        policy:
          - id: fast
            algorithm: ecdsap256sha256
            nsec3: on
            nsec3-iterations: 0
            nsec3-salt-length: 0
            dnskey-ttl: 1
            zone-max-ttl: 1
            propagation-delay: 0
            ksk-lifetime: 0
            zsk-lifetime: 0
"""
SIGNING = """\
            dnssec-signing: on
            dnssec-policy: fast
"""


def ask(image, name, qtype):
    return pop53.answer(image, make_query(name, qtype), ("127.0.0.1", 5353))


def dnskeys(image):
    m = dns.message.from_wire(ask(image, ZONE, "DNSKEY"))
    rr = m.find_rrset(m.answer, dns.name.from_text(ZONE), dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    return rr


def check_image(image) -> list[str]:
    keys = dnskeys(image)
    problems = signature_problems(ask(image, ZONE, "DNSKEY"), keys)
    for name, qtype in ((f"www.{ZONE}", "A"), (f"nope.{ZONE}", "A"), (f"www.{ZONE}", "MX"),
                        (ZONE, "SOA"), (ZONE, "NS")):
        raw = ask(image, name, qtype)
        m = dns.message.from_wire(raw)
        sigs = [rr for rr in m.answer + m.authority if rr.rdtype == dns.rdatatype.RRSIG]
        if not sigs:
            problems.append(f"{name} {qtype}: no RRSIG")
        if qtype == "A" and name.startswith("nope") and not any(
                rr.rdtype == dns.rdatatype.NSEC3 for rr in m.authority):
            problems.append(f"{name} {qtype}: no NSEC3 proof")
        problems += [f"{name} {qtype}: {p}" for p in signature_problems(raw, keys)]
    return problems


def test_signed_by_the_primary_served_through_a_zsk_roll(knot_factory, engines, tmp_path):
    pop_port = free_port()
    k = knot_primary(knot_factory, pop_port, policy=POLICY, zone_opts=SIGNING)
    e, images = publishing_engine(engines, tmp_path, k.port, pop_port)

    wait_for(lambda: images and len(dnskeys(images[-1])) >= 2, 20, what="first signed image")
    first = images[-1]
    assert check_image(first) == []
    zsk0 = {dns.dnssec.key_id(key) for key in dnskeys(first) if not key.flags & 1}
    assert len(zsk0) == 1

    # Knot rolls the ZSK: pre-publish the new key, re-sign, withdraw the old one (RFC 6781 §4.1.1.1)
    k.knotc("zone-key-rollover", ZONE, "zsk")

    def rolled():
        zsks = {dns.dnssec.key_id(key) for key in dnskeys(images[-1]) if not key.flags & 1}
        return zsks and not zsks & zsk0
    wait_for(rolled, 60, what="the ZSK roll reaching pop53")
    seen = list(images)
    # the roll took more than one transfer: measured here 4 images (signed; new ZSK published;
    # re-signed with it; old ZSK withdrawn), 3 IXFRs
    assert len(seen) >= 3
    bad = {i: p for i, img in enumerate(seen) if (p := check_image(img))}
    assert not bad, bad
    assert e.stats["xfr_in.ixfr.ok"] >= 2
