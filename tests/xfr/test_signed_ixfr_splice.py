"""IXFRs that add and remove names of a signed zone (issue 14 point 2 with issue 12): Knot signs
the zone itself (NSEC3), so a name added or removed on the primary also adds or removes an NSEC3
owner and changes its neighbours' next hashes.  The name-by-name patcher turns such a change
down; the publisher then compiles that zone alone and splices it into the image
(xfr/wholepatch.py) instead of compiling every zone: the publisher's counters show each IXFR
spliced and no full compile (a retransfer's AXFR too), and every image answers DO=1 queries exactly as a full compile of
the same zones (a file zone beside it names the added host in its MX: a target crossing zones),
with signatures that verify against the image's DNSKEY RRset."""
from __future__ import annotations

import dns.message
import dns.name
import dns.rcode
import pytest

from xfr_support import free_port, wait_for

from test_knot_primary import ZONE, engine_config, knot_primary
from test_knot_signing_primary import POLICY, SIGNING, ask, check_image

pytest.importorskip("pop53._core")
from pop53.xfr.publisher import ImagePublisher  # noqa: E402
from pop53.xfr.service import XfrService  # noqa: E402
from pop53.zone.compiler import compile_zone_data  # noqa: E402
from pop53.zone.zonefile import zone_from_bytes  # noqa: E402

pytestmark = pytest.mark.peers

FILE = "other.test."
QUERIES = [(n, t) for n in (ZONE, f"www.{ZONE}", f"new.{ZONE}", f"x.new.{ZONE}", f"nope.{ZONE}",
                            f"mail.{ZONE}", FILE)
           for t in ("A", "MX", "NS", "SOA", "DNSKEY", "NSEC3PARAM", "TXT")]


def file_zone():
    text = (f"$ORIGIN {FILE}\n$TTL 300\n@ SOA ns1 h 1 3600 600 86400 60\n@ NS ns1\n"
            f"ns1 A 192.0.2.1\n@ MX 10 new.{ZONE}\n@ MX 20 www.{ZONE}\n")
    return zone_from_bytes(text.encode(), dns.name.from_text(FILE), source=FILE)


def like_full(pub, image) -> None:
    full = compile_zone_data(pub.static + [pub.zones[ZONE]], seed=image.view.seed)
    for n, t in QUERIES:
        assert ask(image, n, t) == ask(full, n, t), (n, t)
    assert check_image(image) == []


def test_ixfr_adding_and_removing_names_of_a_signed_zone_is_spliced(knot_factory, engines,
                                                                      tmp_path):
    pop_port = free_port()
    k = knot_primary(knot_factory, pop_port, policy=POLICY, zone_opts=SIGNING)
    images = []
    pub = ImagePublisher(images.append, static=[file_zone()])
    e = XfrService(engine_config(tmp_path, k.port), pub)
    engines.append(e)
    e.start()
    e.start_listener("127.0.0.1", pop_port)

    def rcode(name, qtype="A"):
        m = dns.message.from_wire(ask(images[-1], name, qtype))
        return m.rcode() if m.answer or m.rcode() != dns.rcode.NOERROR else "NODATA"
    wait_for(lambda: images and pub.zones.get(ZONE) is not None
             and rcode(f"www.{ZONE}") == dns.rcode.NOERROR, 20, what="the first signed image")
    like_full(pub, images[-1])
    compiled, spliced = pub.stats["compiled"], pub.stats["spliced"]

    k.change(ZONE, ("new", "300", "A", "192.0.2.77"), ("x.new", "300", "TXT", "deeper"))
    wait_for(lambda: rcode(f"new.{ZONE}") == dns.rcode.NOERROR, 20, what="the added names")
    like_full(pub, images[-1])
    m = dns.message.from_wire(ask(images[-1], FILE, "MX"))
    assert f"new.{ZONE}" in {rr.name.to_text() for rr in m.additional}
    k.change(ZONE, unsets=(("new",),))       # an empty non-terminal now
    wait_for(lambda: rcode(f"new.{ZONE}") == "NODATA" and
             rcode(f"x.new.{ZONE}", "TXT") == dns.rcode.NOERROR, 20, what="the removed name")
    like_full(pub, images[-1])
    k.change(ZONE, unsets=(("x.new",),))
    wait_for(lambda: rcode(f"new.{ZONE}") == dns.rcode.NXDOMAIN, 20, what="the removed ENT")
    like_full(pub, images[-1])

    assert e.stats["xfr_in.ixfr.ok"] >= 3
    assert pub.stats["compiled"] == compiled, pub.stats
    # Knot may send the re-signing of a change as a second IXFR (patched: names kept)
    assert pub.stats["spliced"] >= spliced + 3, pub.stats
    # a full transfer of the signed zone (retransfer): spliced as well
    spliced, axfrs = pub.stats["spliced"], e.stats["xfr_in.axfr.ok"]

    def axfr_done():
        return pub.stats["spliced"] > spliced and e.stats["xfr_in.axfr.ok"] > axfrs
    for _attempt in range(8):       # asked again if a refresh in flight took the request
        e.refresher.retransfer_now(ZONE)
        try:
            wait_for(axfr_done, 5, what="the AXFR")
            break
        except AssertionError:
            continue
    assert axfr_done(), (pub.stats, dict(e.stats))
    like_full(pub, images[-1])
    assert pub.stats["compiled"] == compiled, pub.stats
