"""zone/arena.py: spliced images share one memory file, each a copy-on-write mapping of it.  A
chain of splices (replace, add, remove with a zone moving in the table, a splice given up after
its tail was written) answers as a full compile at every step, no earlier image changes by a
byte while later ones are built, and a saved spliced image carries a valid checksum."""
from __future__ import annotations

from pop53.zone import arena
from pop53.zone.compiler import HEADER, compile_zone_data
from pop53.zone.images import Image, load_image
from pop53.zone.splice import _zones, splice

from tests.zone.test_splice import ORIGINS, SEED, alone, check, key, zone


def test_chain_keeps_every_image_and_answers_as_a_full_compile(tmp_path):
    datas = {o: zone(o, 1) for o in ORIGINS}
    first = compile_zone_data(list(datas.values()), seed=SEED)
    images = [(first, bytes(first))]
    cur = first
    steps = [("z2.test.", 2, ""), ("z4.test.", 3, "new IN A 192.0.2.99\n"),
             ("added.test.", 5, ""), ("z2.test.", 6, "h9 IN NS ns.h9\n")]
    for origin, serial, extra in steps:
        datas[origin] = zone(origin, serial, extra)
        cur = splice(cur, {key(origin): alone(datas[origin])})
        check(cur, list(datas.values()))
        assert arena.has_file(cur)
        images.append((cur, bytes(cur)))
    # a splice given up after its tail was written to the file (its image dropped at once)
    draft = arena.Draft(cur, len(cur) + 3 * 4096)
    draft.arr[len(cur):] = 0xEE
    h = list(HEADER.unpack_from(draft.arr, 0))
    h[3] = len(draft.arr)
    HEADER.pack_into(draft.arr, 0, *h)
    draft.finish([(0, 64)])
    del draft
    # the next splice sees zeros past the old size again, not the abandoned tail
    datas["z5.test."] = zone("z5.test.", 7)
    cur = splice(cur, {key("z5.test."): alone(datas["z5.test."])})
    check(cur, list(datas.values()))
    # a removal moves the last zone into the freed slot (its nodes are rewritten in place)
    del datas["z1.test."]
    cur = splice(cur, {}, [key("z1.test.")])
    check(cur, list(datas.values()))
    images.append((cur, bytes(cur)))
    datas["z0.test."] = zone("z0.test.", 8)
    cur = splice(cur, {key("z0.test."): alone(datas["z0.test."])})
    check(cur, list(datas.values()))
    # copy-on-write: no image changed while the later ones were built
    for image, was in images:
        assert bytes(image) == was
    # a splice without a removal writes below the old size only its header
    for (_a, ba), (_b, bb) in zip(images[:5], images[1:5]):
        assert bb[64:len(ba)] == ba[64:]
    path = tmp_path / "zones.img"
    cur.save(path)
    loaded = load_image(path)              # header, tables and the checksum written by save
    assert bytes(loaded)[64:] == bytes(cur)[64:]
    check(loaded, list(datas.values()))
    assert len(cur) == len(Image(cur._data, full_check=True))
    assert set(ORIGINS + ["added.test."]) - {"z1.test."} <= set(cur.zones())


def test_a_write_below_the_old_size_reaches_the_next_image():
    """Whatever a splice writes below the old size (not only the header it declares) is held
    privately by its image and copied into the next one (found in /proc/self/pagemap)."""
    datas = {o: zone(o, 1) for o in ORIGINS}
    first = compile_zone_data(list(datas.values()), seed=SEED)
    # z2's first version: garbage once z2 is replaced
    z2 = [z for k, z in _zones(first._data) if k == key("z2.test.")][0]
    datas["z2.test."] = zone("z2.test.", 2)
    s1 = splice(first, {key("z2.test."): alone(datas["z2.test."])})
    draft = arena.Draft(s1, len(s1))
    off = z2[5] + 4 * z2[6] // 2          # inside z2's old node table
    draft.arr[off] ^= 0xA5
    s2 = draft.finish([(0, 64)])
    assert bytes(s1)[off] != bytes(s2)[off]
    assert arena.has_file(s2)
    draft = arena.Draft(s2, len(s2) + 4096)
    assert draft.arr[off] == bytes(s2)[off]
    datas["z4.test."] = zone("z4.test.", 3)
    check(splice(s2, {key("z4.test."): alone(datas["z4.test."])}), list(datas.values()))


def test_two_splices_of_the_same_image():
    """A second splice of an image already spliced (its successor in the same memory file
    extends past it) goes to a new file: the first result keeps its bytes."""
    datas = {o: zone(o, 1) for o in ORIGINS}
    first = compile_zone_data(list(datas.values()), seed=SEED)
    # tails of several pages (a tail within the page the old image ends in stays private)
    za = zone("z1.test.", 2, "".join(f"a{i} IN A 192.0.2.{i % 250}\n" for i in range(300)))
    zb = zone("z1.test.", 3, "".join(f"b{i} IN TXT \"other {i}\"\n" for i in range(300)))
    a = splice(first, {key("z1.test."): alone(za)})
    was = bytes(a)
    b = splice(first, {key("z1.test."): alone(zb)})
    assert bytes(a) == was
    check(a, list({**datas, "z1.test.": za}.values()))
    check(b, list({**datas, "z1.test.": zb}.values()))
