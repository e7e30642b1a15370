"""Static data at a mapped name, as `pop53 serve` and every reload see it (the compiled image,
mapping.config.check_image), against `pop53 check`'s verdict on the parsed zone (check_zones):
the same rejections, naming the same config key."""
from __future__ import annotations

import pytest

import pop53
from pop53.errors import ConfigError
from pop53.mapping.config import check_image, check_zones, parse
from pop53.zone.zonefile import load_zone_file

HEAD = """$ORIGIN cdn.example.
$TTL 3600
@    SOA ns1 host 1 7200 3600 1209600 300
@    NS  ns1
ns1  A   192.0.2.53
"""


def _cfg(name="www.cdn.example.", type_=None):
    doc = {"map": [{"name": "m", "file": "unused.map", "default": "us"}],
           "target": [{"name": "t", "addresses": ["192.0.2.1"], "host": "t.example."}],
           "mapped": [{"name": name, "map": "m", "regions": {"us": ["t"]},
                       **({"type": type_} if type_ else {})}]}
    return parse(doc, "pop53.toml", zones=["cdn.example."])


@pytest.mark.parametrize("body,name,type_,want", [
    ("www CNAME elsewhere.example.\n", "www.cdn.example.", None, "has static CNAME"),
    ("www A 192.0.2.7\n", "www.cdn.example.", "A", "has static A"),
    ("www TXT hi\n", "www.cdn.example.", None, None),              # another type beside it
    ("www AAAA 2001:db8::1\n", "www.cdn.example.", "A", None),
    ("www TXT hi\nwww MX 1 mx\n", "www.cdn.example.", "CNAME", "has static MX, TXT"),
    ("sub NS ns.elsewhere.\n", "www.sub.cdn.example.", None, "below the static delegation sub"),
    ("sub NS ns.elsewhere.\n", "sub.cdn.example.", "NS", "has static NS"),
    ("* A 192.0.2.9\n", "www.cdn.example.", None, None),       # a wildcard is not the name
    ("", "www.cdn.example.", None, None),
])
def test_serve_and_check_agree(tmp_path, body, name, type_, want):
    path = tmp_path / "z.zone"
    path.write_text(HEAD + body)
    cfg = _cfg(name, type_)
    img = pop53.compile_zones([str(path)])
    zd = load_zone_file(str(path), "cdn.example.")
    got = []
    for check in (lambda: check_image(cfg, img), lambda: check_zones(cfg, [zd])):
        try:
            check()
            got.append(None)
        except ConfigError as exc:
            assert "mapped[0].name" in str(exc) and "pop53.toml" in str(exc)
            got.append(str(exc))
    if want is None:
        assert got == [None, None]
    else:
        assert all(g is not None and want in g for g in got), got


def test_zones_signed_online_expect_the_mapped_types(tmp_path):
    """In a zone signed online the mapped types sit at the name for the NSEC chain."""
    path = tmp_path / "z.zone"
    path.write_text(HEAD + "www A 192.0.2.7\n")
    import dns.name
    img = pop53.compile_zones([str(path)])
    check_image(_cfg(type_="A"), img, {dns.name.from_text("cdn.example.")})
    with pytest.raises(ConfigError):
        check_image(_cfg(type_="A"), img, ())
