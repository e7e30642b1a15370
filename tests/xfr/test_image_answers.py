"""End to end with the data plane: Knot primary -> NOTIFY + IXFR -> pop53.xfr -> validate ->
pop53.compiler.compile_zone_data -> one image swap -> pop53.answer gives the new data, and an
image published earlier still answers the old data (each image is one version)."""
from __future__ import annotations

import dns.message
import dns.rcode
import pytest

from xfr_support import free_port, wait_for

from test_knot_primary import ZONE, engine_config, knot_primary

pytest.importorskip("pop53._core")
import pop53  # noqa: E402
from pop53.xfr.publisher import ImagePublisher  # noqa: E402
from pop53.xfr.service import XfrService  # noqa: E402

pytestmark = pytest.mark.peers


def ask(image, name, rdtype="A"):
    q = dns.message.make_query(name, rdtype)
    wire = pop53.answer(image, q.to_wire(), ("127.0.0.1", 5353))
    r = dns.message.from_wire(wire)
    return r.rcode(), sorted(rd.to_text() for rr in r.answer for rd in rr)


def publishing_engine(engines, tmp_path, knot_port: int, pop_port: int):
    """An xfr engine taking the zone from Knot and publishing every version as an image:
    returns (the engine, the list the images are appended to)."""
    images = []
    e = XfrService(engine_config(tmp_path, knot_port), ImagePublisher(images.append))
    engines.append(e)
    e.start()
    e.start_listener("127.0.0.1", pop_port)
    return e, images


def test_published_image_answers_new_data(knot_factory, engines, tmp_path):
    pop_port = free_port()
    k = knot_primary(knot_factory, pop_port)
    e, images = publishing_engine(engines, tmp_path, k.port, pop_port)

    wait_for(lambda: images, 10, what="first image")
    first = images[-1]
    assert ask(first, "www.example.org.") == (dns.rcode.NOERROR, ["192.0.2.1"])
    assert ask(first, "new.example.org.")[0] == dns.rcode.NXDOMAIN

    k.change(ZONE, ("new", "300", "A", "192.0.2.77"))
    wait_for(lambda: len(images) == 2, 10, what="second image")
    assert ask(images[-1], "new.example.org.") == (dns.rcode.NOERROR, ["192.0.2.77"])
    assert ask(images[-1], "www.example.org.") == (dns.rcode.NOERROR, ["192.0.2.1"])
    # The old image is a whole old version: never a mix.
    assert ask(first, "new.example.org.")[0] == dns.rcode.NXDOMAIN
    assert e.stats["xfr_in.ixfr.ok"] == 1
