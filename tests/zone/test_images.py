"""Images: saved and loaded images answer identically; a corrupt image is refused or, where the
corruption is harmless, loads and still never crashes the data path."""
from __future__ import annotations

import random
from pathlib import Path

import dns.message
import pytest

import pop53
from pop53.errors import ImageError

DATA = Path(__file__).resolve().parents[1] / "data"
ZONES = [DATA / "core.test.zone", DATA / "other.test.zone", DATA / "child.core.test.zone"]
NAMES = ["www.core.test.", "alias.core.test.", "x.wild.core.test.", "foo.dn.core.test.",
         "host.deleg.core.test.", "nope.core.test.", "core.test.", "host.child.core.test.",
         "_sip._udp.core.test.", "big.core.test.", "www.other.test.", "b.c.core.test."]
TYPES = ["A", "AAAA", "MX", "TXT", "NS", "SRV", "ANY", "DS", "SOA", "CNAME"]


def queries():
    rng = random.Random(7)
    out = []
    for name in NAMES:
        for t in TYPES:
            q = dns.message.make_query(name, t, use_edns=rng.choice([False, 0]))
            q.id = rng.randrange(65536)
            out.append(q.to_wire())
    return out


@pytest.fixture(scope="module")
def image():
    return pop53.compile_zones(ZONES, seed=12345)


def test_saved_image_answers_identically(image, tmp_path):
    path = tmp_path / "zones.img"
    image.save(path)
    loaded = pop53.load_image(path)
    assert len(loaded) == len(image) and bytes(loaded) == bytes(image)
    assert loaded.zones() == image.zones() == {"core.test.": 1, "other.test.": 7, "child.core.test.": 3}
    for wire in queries():
        for tcp in (False, True):
            a = pop53.answer(image, wire, ("127.0.0.1", 1), tcp=tcp)
            b = pop53.answer(loaded, wire, ("127.0.0.1", 1), tcp=tcp)
            assert a == b and a is not None


def test_compile_is_deterministic_for_a_seed():
    assert bytes(pop53.compile_zones(ZONES, seed=1)) == bytes(pop53.compile_zones(ZONES, seed=1))


def test_different_seeds_answer_the_same():
    a, b = pop53.compile_zones(ZONES, seed=1), pop53.compile_zones(ZONES, seed=2)
    assert bytes(a) != bytes(b)
    for wire in queries():
        assert pop53.answer(a, wire, ("127.0.0.1", 1)) == pop53.answer(b, wire, ("127.0.0.1", 1))


@pytest.mark.parametrize("cut", [0, 10, 63, 64, 200, -1])
def test_truncated_image_is_refused(image, tmp_path, cut):
    data = bytes(image)
    path = tmp_path / "t.img"
    path.write_bytes(data[:cut] if cut >= 0 else data[:-1])
    with pytest.raises(ImageError, match=str(path)):
        pop53.load_image(path)


def test_wrong_magic_and_missing_file(tmp_path):
    with pytest.raises(ImageError):
        pop53.load_image(tmp_path / "nope.img")
    p = tmp_path / "x.img"
    p.write_bytes(b"NOTANIMG" + bytes(100))
    with pytest.raises(ImageError):
        pop53.load_image(p)


def test_random_corruption_never_crashes(image):
    """Flip bytes anywhere: the image is either refused by validation or, if it passes, every
    query still gets an answer or a drop without crashing (validation bounds every offset)."""
    rng = random.Random(53)
    data = bytes(image)
    wires = queries()
    refused = served = 0
    for _ in range(400):
        buf = bytearray(data)
        for _ in range(rng.choice([1, 2, 4, 16])):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        try:
            img = pop53.Image(bytes(buf))
        except ImageError:
            refused += 1
            continue
        served += 1
        for wire in rng.sample(wires, 20):
            pop53.answer(img, wire, ("127.0.0.1", 1))
            pop53.answer(img, wire, ("127.0.0.1", 1), tcp=True)
    assert refused > 0 and served > 0


def test_saved_image_checksum_catches_any_flipped_byte(image, tmp_path):
    """load_image checks header, tables and the checksum by default: one changed byte
    anywhere (outside the checksum field itself) is refused."""
    data = bytearray(bytes(image))
    rng = random.Random(9)
    for pos in [0, 8, 30, 59, 64, 100] + [rng.randrange(64, len(data)) for _ in range(40)]:
        buf = bytearray(data)
        buf[pos] ^= 1 << rng.randrange(8)
        p = tmp_path / f"c{pos}.img"
        p.write_bytes(bytes(buf))
        with pytest.raises(ImageError):
            pop53.load_image(p)
    p = tmp_path / "ok.img"
    p.write_bytes(bytes(data))
    assert pop53.load_image(p).zones() == image.zones()
    assert pop53.load_image(p, full_check=True).zones() == image.zones()
