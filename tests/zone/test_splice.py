"""zone/splice.py: a zone compiled alone and spliced into an image (replaced, added, removed, a
SERVFAIL stand-in replaced) answers byte for byte as a full compile of the resulting zone set,
zones nested in one another and NS/MX/SRV targets crossing zones included (the additional-target
lists a full compile resolves across zones are rewritten: zone/splice.py)."""
from __future__ import annotations

import dns.message
import dns.name

from pop53 import _core
from pop53.zone.compiler import compile_zone_data, failed_zone
from pop53.zone.images import Image
from pop53.zone.splice import splice
from pop53.zone.zonefile import zone_from_bytes

SEED = 0x1234ABCD
TYPES = ("SOA", "NS", "A", "AAAA", "MX", "TXT", "CNAME", "ANY", "DS")
NAMES = ("@", "www", "mail", "ns1", "h3", "new", "x.sub", "ns.sub", "mail.sub", "c", "nope")


def zone(name: str, serial: int, extra: str = "", mx: str = "mail"):
    text = (f"$ORIGIN {name}\n$TTL 300\n@ IN SOA ns1 hostmaster {serial} 3600 600 86400 300\n"
            f"@ IN NS ns1\nns1 IN A 192.0.2.1\n@ IN MX 10 {mx}\nmail IN A 192.0.2.20\n"
            f"www IN CNAME @\nsub IN NS ns.sub\nns.sub IN A 203.0.113.1\n"
            + "".join(f"h{j} IN A 198.51.100.{j}\n" for j in range(5)) + extra)
    return zone_from_bytes(text.encode(), dns.name.from_text(name), source=name)


def alone(data, expired=()) -> Image:
    return compile_zone_data([data], seed=SEED, expired=expired)


def answers(image, origins, names=NAMES, types=TYPES) -> list[bytes]:
    r = _core.Responder()
    out = []
    for o in origins:
        for n in names:
            qname = o if n == "@" else f"{n}.{o}"
            for t in types:
                q = dns.message.make_query(qname, t)
                q.id = 7
                out.append(_core.answer(image.view, q.to_wire(), r, True)[1])
    return out


def key(o: str) -> bytes:
    return dns.name.from_text(o).to_wire()


ORIGINS = [f"z{i}.test." for i in range(6)]
ALL = ORIGINS + ["added.test.", "sub.z2.test.", "p.test.", "c.p.test."]


def check(spliced, datas, expired=()):
    assert spliced is not None, splice.last_reason
    Image(spliced._data, full_check=True)     # every offset, name and RDATA valid
    full = compile_zone_data(datas, seed=SEED, expired=expired)
    assert answers(spliced, ALL) == answers(full, ALL)
    assert spliced.zones() == full.zones()
    assert spliced.counts == full.counts


def test_replace_add_remove_and_stand_in():
    datas = {o: zone(o, 1) for o in ORIGINS}
    old = compile_zone_data(list(datas.values()), seed=SEED)
    # replace z2 (names added and removed, a new cut)
    new2 = zone("z2.test.", 2, "new IN A 192.0.2.99\nnew IN AAAA 2001:db8::1\nh9 IN NS ns.h9\n")
    d = {**datas, "z2.test.": new2}
    s1 = splice(old, {key("z2.test."): alone(new2)})
    check(s1, list(d.values()))
    # add a zone
    added = zone("added.test.", 5)
    d2 = {**d, "added.test.": added}
    s2 = splice(s1, {key("added.test."): alone(added)})
    check(s2, list(d2.values()))
    # remove a zone in the middle of the table (the last zone takes its slot)
    d3 = {k: v for k, v in d2.items() if k != "z1.test."}
    s3 = splice(s2, {}, [key("z1.test.")])
    check(s3, list(d3.values()))
    # a SERVFAIL stand-in in, then its zone fixed
    d4 = {**d3, "z4.test.": failed_zone("z4.test.")}
    s4 = splice(s3, {key("z4.test."): alone(failed_zone("z4.test."), ["z4.test."])})
    check(s4, list(d4.values()), expired=["z4.test."])
    d5 = {**d3, "z4.test.": zone("z4.test.", 9)}
    s5 = splice(s4, {key("z4.test."): alone(d5["z4.test."])})
    check(s5, list(d5.values()))


def test_targets_crossing_zones_are_rewritten():
    datas = {o: zone(o, 1) for o in ORIGINS}
    old = compile_zone_data(list(datas.values()), seed=SEED)
    # z3 now names mail.z4.test. (which has an address): a full compile lists it
    datas["z3.test."] = zone("z3.test.", 2, mx="mail.z4.test.")
    s1 = splice(old, {key("z3.test."): alone(datas["z3.test."])})
    check(s1, list(datas.values()))
    assert splice.last_stats["lists_rewritten"] == 1
    # the target's zone replaced (mail.z4 gets a new address), then removed, then back
    datas["z4.test."] = zone("z4.test.", 2, "mail IN AAAA 2001:db8::20\n")
    s2 = splice(s1, {key("z4.test."): alone(datas["z4.test."])})
    check(s2, list(datas.values()))
    assert splice.last_stats["lists_rewritten"] == 1
    gone = {k: v for k, v in datas.items() if k != "z4.test."}
    s3 = splice(s2, {}, [key("z4.test.")])
    check(s3, list(gone.values()))
    s4 = splice(s3, {key("z4.test."): alone(datas["z4.test."])})
    check(s4, list(datas.values()))
    # a target in a zone that joins later; an unrelated zone rewrites nothing
    datas["z0.test."] = zone("z0.test.", 2, mx="mail.added.test.")
    s5 = splice(s4, {key("z0.test."): alone(datas["z0.test."])})
    check(s5, list(datas.values()))
    datas["added.test."] = zone("added.test.", 1)
    s6 = splice(s5, {key("added.test."): alone(datas["added.test."])})
    check(s6, list(datas.values()))
    datas["z1.test."] = zone("z1.test.", 2, "new IN A 192.0.2.7\n")
    check(splice(s6, {key("z1.test."): alone(datas["z1.test."])}), list(datas.values()))
    assert splice.last_stats["lists_rewritten"] == 0


def test_nested_zones_are_spliced():
    """A zone served inside another: the parent's MX target below its cut is the parent's own
    (glue-like) node until the child zone is served, then the child's node (the longest zone
    holding the name); splicing the child in or out, or the parent while the child is there,
    gives the full compile's lists."""
    parent = lambda serial, extra="": zone("z2.test.", serial, extra +
                                           "@ IN MX 20 mail.sub\nmail.sub IN A 203.0.113.9\n")
    datas = {**{o: zone(o, 1) for o in ORIGINS}, "z2.test.": parent(1)}
    old = compile_zone_data(list(datas.values()), seed=SEED)
    datas["sub.z2.test."] = zone("sub.z2.test.", 3)
    s1 = splice(old, {key("sub.z2.test."): alone(datas["sub.z2.test."])})
    check(s1, list(datas.values()))
    assert splice.last_stats["lists_rewritten"] >= 1
    datas["sub.z2.test."] = zone("sub.z2.test.", 4, "mail IN AAAA 2001:db8::4\n")
    s2 = splice(s1, {key("sub.z2.test."): alone(datas["sub.z2.test."])})
    check(s2, list(datas.values()))
    datas["z2.test."] = parent(2, "new IN A 192.0.2.99\n")
    s3 = splice(s2, {key("z2.test."): alone(datas["z2.test."])})
    check(s3, list(datas.values()))
    del datas["sub.z2.test."]
    s4 = splice(s3, {}, [key("sub.z2.test.")])
    check(s4, list(datas.values()))
    # a parent and its child spliced in at once (the parent new to the image)
    datas["p.test."] = zone("p.test.", 1, "@ IN MX 5 mail.c\nc IN NS ns1.c\nmail.c IN A 1.2.3.4\n")
    datas["c.p.test."] = zone("c.p.test.", 1)
    s5 = splice(s4, {key("p.test."): alone(datas["p.test."]),
                     key("c.p.test."): alone(datas["c.p.test."])})
    check(s5, list(datas.values()))


def test_seed_mismatch_falls_back():
    old = compile_zone_data([zone(o, 1) for o in ORIGINS], seed=SEED)
    other = compile_zone_data([zone("z1.test.", 2)], seed=SEED + 1)
    assert splice(old, {key("z1.test."): other}) is None
