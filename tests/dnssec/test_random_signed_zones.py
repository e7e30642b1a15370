"""Hypothesis: random signed zones (random names, wildcards, empty non-terminals, delegations
with and without DS, CNAMEs), signed with NSEC, NSEC3 or NSEC3 opt-out, answer every query
(each name, names below and beside them, the types they hold and do not) with DO=1 as Knot
answers them, within the proof tolerance, and every RRSIG pop53 sends verifies."""
from __future__ import annotations

import os

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from proofs import differences, make_query, signature_problems
from signing import VARIANTS, make_keys, sign
from pop53 import answer, compile_zones
from tests.support.refservers import KnotServer, Zone

pytestmark = pytest.mark.peers

ORIGIN = "rnd.example."
LABELS = ["a", "b", "c", "mx", "*"]
DS = "12345 13 2 " + "AB" * 32

label = st.sampled_from(LABELS)
rel_name = st.lists(label, min_size=1, max_size=3).filter(lambda ls: "*" not in ls[1:])
kind = st.sampled_from(["a", "txt", "both", "cname", "cut", "cut-ds"])
zone_spec = st.dictionaries(rel_name.map(tuple), kind, min_size=1, max_size=10)


def zone_text(spec: dict) -> tuple[str, list[str]]:
    """A valid zone from the spec (names below a cut dropped, no cut at a wildcard) and the
    relative names it holds."""
    lines = [f"$ORIGIN {ORIGIN}", "$TTL 600", "@ SOA ns1 host 1 7200 3600 1209600 300",
             "@ NS ns1", "ns1 A 192.0.2.1"]
    cuts = {n for n, k in spec.items() if k.startswith("cut") and n[0] != "*"}
    names = []
    for labels, k in sorted(spec.items()):
        if any(labels != c and labels[-len(c):] == c for c in cuts):
            continue        # occluded by a cut above it
        name = ".".join(labels)
        names.append(name)
        if k.startswith("cut") and labels in cuts:
            lines += [f"{name} NS ns.{name}", f"ns.{name} A 192.0.2.9"]
            if k == "cut-ds":
                lines.append(f"{name} DS {DS}")
        elif k == "cname":
            lines.append(f"{name} CNAME {'a' if name != 'a' else 'b'}.{ORIGIN}")
        else:
            if k in ("a", "both", "cut", "cut-ds"):
                lines.append(f"{name} A 192.0.2.7")
            if k in ("txt", "both"):
                lines.append(f'{name} TXT "t"')
    return "\n".join(lines) + "\n", names


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("rnd-keys")
    make_keys(d, ORIGIN)
    return d


@pytest.fixture(scope="module")
def knot_path(tmp_path_factory):
    return tmp_path_factory.mktemp("rnd-zones")


# a few examples per CI run (each signs a zone and starts Knot), the same ones every run
# (derandomize: CI must not depend on luck); POP53_DNSSEC_EXAMPLES=200 with
# POP53_DNSSEC_RANDOM=1 hunts.  A hunt found an opt-out NXDOMAIN below a bare ENT where the
# proofs differed: settled for RFC 5155 §7.2.2 (the wildcard at the closest provable encloser
# is proven, as Knot does), test_optout_ent.py.
@settings(max_examples=int(os.environ.get("POP53_DNSSEC_EXAMPLES", "6")), deadline=None,
          derandomize=os.environ.get("POP53_DNSSEC_RANDOM") != "1",
          suppress_health_check=list(HealthCheck), database=None)
@given(spec=zone_spec, variant=st.sampled_from(sorted(VARIANTS)))
def test_random_signed_zones_answer_like_knot(keys, knot_path, spec, variant):
    text, names = zone_text(spec)
    src = knot_path / "src.zone"
    src.write_text(text)
    out = knot_path / f"{variant}.zone"
    s = sign(src, keys, out, variant, ORIGIN)
    zone = dns.zone.from_file(str(out), ORIGIN, relativize=False)
    dnskey = zone.find_rrset(ORIGIN, "DNSKEY")
    asks = set()
    for rel in names + ["@", "zz", "a.zz"]:
        base = ORIGIN if rel == "@" else f"{rel}.{ORIGIN}"
        parent = dns.name.from_text(base).parent().to_text() if rel != "@" else ORIGIN
        for qn in (base, "zz." + base, "q" + base if rel != "@" else base, "yy." + parent):
            for qt in ("A", "TXT", "DS", "NS", "MX"):
                asks.add((qn.replace("*", "w"), qt) if qn.startswith("q*") else (qn, qt))
    hashed = [n for n, node in zone.nodes.items()
              if node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC3)]
    asks |= {(n.to_text(), "A") for n in hashed[:3]}
    image = compile_zones([(str(out), ORIGIN)])
    bad = []
    with KnotServer([Zone(ORIGIN, s.path)]) as knot:
        for qn, qt in sorted(asks):
            wire = make_query(qn, qt)
            a = knot.query(wire, tcp=True)
            b = answer(image, wire, ("192.0.2.99", 5353), tcp=True)
            diff = differences(a, b)
            probs = signature_problems(b, dnskey)
            if diff or probs:
                bad.append((qn, qt, diff, probs))
    assert not bad, f"{variant}\n{text}\n" + "\n".join(map(str, bad[:3]))
