"""The C compile of scanner records (ext/zonebuild.pxi, issue 15 point 1) against the node-object
compile of the same zones read by dnspython: the same image, byte for byte, for several zones at
once (additional targets across zones, the longest zone holding a target), delegations below
delegations, wildcards under empty non-terminals, repeated records, expired zones."""
from __future__ import annotations

import dns.name
import pytest

import pop53
from pop53.errors import ZoneError
from pop53.zone import compiler, zonefile

PARENT = """$ORIGIN ex.test.
$TTL 300
@ IN SOA ns1 h 7 3600 600 86400 120
@ NS ns1
@ NS ns1.child
@ MX 10 Mail
@ MX 20 mail.other.test.
mail A 192.0.2.25
ns1 A 192.0.2.1
ns1 AAAA 2001:db8::1
child NS ns1.child
child NS ns2.child
ns1.child A 192.0.2.53
deep.a.b.c TXT "ent above"
*.w.x A 192.0.2.9
*.w.x MX 5 ns1
sub NS ns.sub
sub DS 1 8 2 0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF
x.y.sub NS ns.elsewhere.test.
ns.sub A 192.0.2.77
_sip._udp SRV 1 2 5060 NS1
dup A 192.0.2.3
DUP 60 A 192.0.2.3
dup 30 A 192.0.2.4
Dup TXT "case"
dn DNAME other.test.
cn CNAME mail
"""
CHILD = """$ORIGIN child.ex.test.
$TTL 60
@ SOA ns1 h 1 1 1 1 1
@ NS ns1
ns1 A 192.0.2.54
"""
OTHER = """$ORIGIN other.test.
$TTL 60
@ SOA ns h 1 1 1 1 1
@ NS ns
ns AAAA 2001:db8::53
mail A 192.0.2.26
"""


def _both(text: str, origin: str):
    o = dns.name.from_text(origin)
    new = zonefile.zone_from_bytes(text.encode(), o, f"{origin}zone")
    ref = zonefile.zone_from_text(text, o, f"{origin}zone")
    assert new.columns is not None and ref.columns is None
    return new, ref


@pytest.mark.parametrize("expired", [(), ("other.test.",)])
def test_flat_compile_same_image_as_node_compile(expired):
    pairs = [_both(PARENT, "ex.test."), _both(CHILD, "child.ex.test."), _both(OTHER, "other.test.")]
    new = [p[0] for p in pairs]
    ref = [p[1] for p in pairs]
    assert all(compiler._flat_ok(z) for z in new)
    assert not any(compiler._flat_ok(z) for z in ref)
    a = pop53.compile_zone_data(ref, seed=11, expired=expired)
    b = pop53.compile_zone_data(new, seed=11, expired=expired)
    assert bytes(a) == bytes(b)


def test_mixed_sources_use_the_node_compile():
    new, ref = _both(PARENT, "ex.test.")
    other_new, _ = _both(OTHER, "other.test.")
    a = pop53.compile_zone_data([ref, other_new], seed=3)
    b = pop53.compile_zone_data([new, other_new], seed=3)
    assert bytes(a) == bytes(b)


def test_signed_zone_takes_the_c_compile():
    # (signed zones in depth: test_flat_compile_signed.py)
    text = CHILD + "@ NSEC ns1 SOA NS NSEC RRSIG\nns1 NSEC @ A NSEC RRSIG\n"
    new, ref = _both(text, "child.ex.test.")
    assert compiler._flat_ok(new)
    assert bytes(pop53.compile_zone_data([new], seed=5)) == bytes(pop53.compile_zone_data([ref], seed=5))


def test_too_many_records_in_one_rrset_names_the_owner():
    lines = [CHILD] + [f"big 60 A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(65536)]
    new = zonefile.zone_from_bytes("\n".join(lines).encode() + b"\n",
                                   dns.name.from_text("child.ex.test."), "big.zone")
    with pytest.raises(ZoneError, match="too large") as e:
        pop53.compile_zone_data([new])
    assert e.value.owner == "big.child.ex.test."
