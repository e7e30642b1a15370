"""Signed zones through the C compile (ext/zonebuild.pxi, ext/zonebuild_dsec.pxi) against the
node-object compile of the same zones read by dnspython (pop53.dnssec.index's DNSSEC block): the
same image, byte for byte.  Zones signed here by dnssec-signzone: the DNSSEC suite's zone (NSEC,
NSEC3, NSEC3 opt-out: wildcards, an ENT, signed and unsigned cuts, an ENT above an insecure cut
only, DNAME, CNAME chains) with its signed child, NSEC3 with a salt and iterations, and random
zones (hypothesis); and hand-written chains for what signers never write (another chain's
records, owners that are not hashes, a hash repeated, names below a hashed owner, names whose
canonical order differs from their octet order)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import dns.dnssec
import dns.name
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pop53
from pop53 import _core
from pop53.dnssec.index import DSEC, MODE_NSEC, MODE_NSEC3
from pop53.zone import compiler, imagefile, zonefile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dnssec"))
import signing  # noqa: E402  (the DNSSEC suite's signer: tests/dnssec/signing.py)

pytestmark = pytest.mark.skipif(not shutil.which("dnssec-signzone"),
                                reason="dnssec-signzone (Debian bind9-utils) not installed")
SIGNED = _core.ZONE_FLAGS["SIGNED"]


def _both(text: str, origin: str, source: str = "zone"):
    o = dns.name.from_text(origin)
    new = zonefile.zone_from_bytes(text.encode(), o, source)
    ref = zonefile.zone_from_text(text, o, source)
    assert compiler._flat_ok(new) and not compiler._flat_ok(ref)
    return new, ref


def _blocks(img: bytes) -> list[tuple]:
    """(mode, salt length, iterations, chain entries, names proven) of each signed zone."""
    hd = compiler.HEADER.unpack_from(img, 0)
    out = []
    for z in range(hd[4]):
        zt = compiler.ZONE.unpack_from(img, hd[5] + compiler.ZONE.size * z)
        if zt[3] & SIGNED:
            d = DSEC.unpack_from(img, zt[5] + 4 * (zt[6] + 1))
            out.append((d[0], d[1], d[2], d[3], d[5]))
    return out


def _same(pairs, seed: int = 7, expired=()) -> bytes:
    """The node compile, the C compile in memory and the C compile streamed to a file (the cold
    load's path, imagefile.compile_to_file, its consumed columns freed as it goes): one image."""
    a = bytes(pop53.compile_zone_data([p[1] for p in pairs], seed=seed, expired=expired))
    b = bytes(pop53.compile_zone_data([p[0] for p in pairs], seed=seed, expired=expired))
    assert len(a) == len(b)
    assert a == b, f"first difference at byte {next(i for i in range(len(a)) if a[i] != b[i])}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "z.img"
        assert imagefile.compile_to_file([p[0] for p in pairs], out, seed=seed, expired=expired,
                                         consume=True) == len(a)
        c = out.read_bytes()
    assert c == a, f"streamed: first difference at {next(i for i in range(len(a)) if a[i] != c[i])}"
    return b             # (compile_zone_data opened it: image_open checks every DNSSEC block)


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    return signing.sign_all(tmp_path_factory.mktemp("flat-signed"))


@pytest.mark.parametrize("variant", ["nsec", "nsec3", "optout", "child"])
def test_signed_zone_same_image(signed, variant):
    s = signed[variant]
    img = _same([_both(s.path.read_text(), s.origin, str(s.path))])
    mode = MODE_NSEC if variant in ("nsec", "child") else MODE_NSEC3
    ((m, _, _, n_chain, n_info),) = _blocks(img)
    assert m == mode and n_chain >= 3 and n_info >= n_chain


def test_signed_parent_child_and_unsigned_in_one_image(signed):
    from test_flat_compile import OTHER
    pairs = [_both(signed[v].path.read_text(), signed[v].origin) for v in ("optout", "child")]
    pairs.append(_both(OTHER, "other.test."))
    img = _same(pairs, seed=99, expired=("other.test.",))
    assert len(_blocks(img)) == 2


def test_signed_zones_through_the_compiler_child(signed, tmp_path):
    """The cold load's path: `python -m pop53.zone.compiler` streams the image to its file
    (imagefile.compile_to_file, consuming the columns) and the server maps it."""
    files = [(str(signed[v].path), signed[v].origin) for v in ("optout", "child")]
    out = tmp_path / "z.img"
    res = compiler.compile_files_isolated(files, str(out), seed=5)
    assert sorted(res["loaded"]) == sorted(o for _, o in files) and not res["failed"]
    ref = pop53.compile_zone_data([zonefile.load_zone_file(p, o) for p, o in files], seed=5)
    assert out.read_bytes() == bytes(ref)
    assert len(_blocks(bytes(ref))) == 2


def test_nsec3_with_salt_and_iterations(signed, tmp_path):
    """RFC 9276 says no salt and no extra iterations, but older zones have both."""
    s = signed["nsec"]
    src = tmp_path / "src.zone"
    src.write_text((signing.ZONES / "sec.example.zone").read_text())
    out = tmp_path / "salted.zone"
    subprocess.run(["dnssec-signzone", "-S", "-K", str(s.keydir), "-o", s.origin, "-f", str(out),
                    "-3", "c0ffee", "-H", "5", str(src)], check=True, capture_output=True,
                   cwd=s.keydir)
    img = _same([_both(out.read_text(), s.origin)])
    assert _blocks(img)[0][:3] == (MODE_NSEC3, 3, 5)


def _h(name: str, salt="AABB", iterations=2) -> str:
    return dns.dnssec.nsec3_hash(name, salt, iterations, 1).lower()


def test_hand_written_nsec3_chain_edge_cases():
    """Records a signer does not write, each kept or left out of the chain as the node compile
    does: another chain's NSEC3 (other iterations; other hash algorithm), owners that are not
    base32hex SHA-1 hashes, an upper-case hashed owner, a hash repeated one level down, an NSEC3
    beside other data (a name of the zone), a name below a hashed owner (an empty non-terminal of
    the same name), two NSEC3PARAMs (the first valid one counts), an opt-out record."""
    o = "e3.test."
    names = [o] + [f"{n}.{o}" for n in ("a", "b.c", "c", "*.w", "w", "x.deep", "deep", "ns")]
    hs = sorted(_h(n) for n in names)
    lines = [f"$ORIGIN {o}", "$TTL 300", "@ SOA ns h 1 2 3 4 5", "@ NS ns", "ns A 192.0.2.1",
             "@ NSEC3PARAM 1 0 2 AABB", "@ NSEC3PARAM 1 0 9 CC", "a A 192.0.2.2", "b.c TXT x",
             "*.w A 192.0.2.3", "sub NS ns.sub", "ns.sub A 192.0.2.4", "x.deep NS ns.x.deep"]
    for i, x in enumerate(hs):
        lines.append(f"{x if i % 2 else x.upper()} NSEC3 1 {int(i == 3)} 2 AABB "
                     f"{hs[(i + 1) % len(hs)]} A RRSIG")
    lines += [f"{_h('zz.' + o, iterations=7)} NSEC3 1 0 7 AABB {hs[0]} A",
              f"{_h('yy.' + o)} NSEC3 2 0 2 AABB {hs[0]} A",
              f"{'z' * 32} NSEC3 1 0 2 AABB {hs[0]} A",
              f"{hs[0][:31]} NSEC3 1 0 2 AABB {hs[0]} A",
              f"{hs[1]}.sub2 NSEC3 1 0 2 AABB {hs[0]} A", "sub2 A 192.0.2.8",
              f"mixed NSEC3 1 0 2 AABB {hs[0]} A", "mixed A 192.0.2.5",
              f"x.{hs[2]} A 192.0.2.6"]
    img = _same([_both("\n".join(lines) + "\n", o)])
    # the apex chain and the repeated hash one level down; names proven: apex, ns, a, b.c, c,
    # *.w, w, deep, the cuts x.deep and sub (ns.sub is below one), sub2, mixed, x.<hash>, and
    # <hash> (an ENT of the name of a hashed owner)
    assert _blocks(img) == [(MODE_NSEC3, 2, 2, len(hs) + 1, 14)]


def test_hand_written_nsec_chain_in_canonical_order():
    """NSEC owners whose canonical order (RFC 4034 §6.1: labels right to left, octets
    lowercased) differs from their presentation and octet order: escapes, upper case, a label
    that is a prefix of another, a wildcard, an ENT, names below a cut (not proven)."""
    o = "n.test."
    owners = ["@", "a", "A.b", "\\000.a", "a\\255", "Ab", "*.z", "y.x.z", "\\!", "-", "zz.sub"]
    lines = [f"$ORIGIN {o}", "$TTL 300", "@ SOA ns h 1 2 3 4 5", "@ NS ns", "ns A 192.0.2.1",
             "sub NS ns.sub"]
    lines += [f"{n} NSEC {owners[(i + 1) % len(owners)]} A NSEC" for i, n in enumerate(owners)]
    img = _same([_both("\n".join(lines) + "\n", o)])
    assert _blocks(img)[0][:4] == (MODE_NSEC, 0, 0, len(owners) - 1)


LABELS = ["a", "b", "Mx", "*", "0"]
label = st.sampled_from(LABELS)
rel_name = st.lists(label, min_size=1, max_size=3).filter(lambda ls: "*" not in ls[1:])
kind = st.sampled_from(["a", "txt", "cname", "dname", "cut", "cut-ds"])


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(spec=st.dictionaries(rel_name.map(tuple), kind, min_size=1, max_size=12),
       variant=st.sampled_from(sorted(signing.VARIANTS)))
def test_random_signed_zones_same_image(tmp_path_factory, spec, variant):
    o = "rnd.example."
    lines = [f"$ORIGIN {o}", "$TTL 600", "@ SOA ns1 host 1 7200 3600 1209600 300", "@ NS ns1",
             "ns1 A 192.0.2.1"]
    cuts = {n for n, k in spec.items() if k.startswith("cut") and n[0] != "*"}
    dnames = {n for n, k in spec.items() if k == "dname"}
    for labels, k in sorted(spec.items()):
        name = ".".join(labels)
        if any(labels != c and labels[-len(c):] == c for c in dnames):
            continue                                    # no data below a DNAME (RFC 6672 §2.4)
        if any(labels != c and labels[-len(c):] == c for c in cuts):
            lines.append(f"{name} A 192.0.2.8")         # glue or occluded below a cut
        elif labels in cuts:
            lines += [f"{name} NS ns.{name}", f"ns.{name} A 192.0.2.9"]
            lines += [f"{name} DS 12345 13 2 {'AB' * 32}"] if k == "cut-ds" else []
        elif k in ("cname", "dname"):
            lines.append(f"{name} {k.upper()} a.{o}")
        else:
            lines.append(f"{name} {'A 192.0.2.7' if k == 'a' else 'TXT t'}")
    d = tmp_path_factory.mktemp("rnd")
    (d / "src.zone").write_text("\n".join(lines) + "\n")
    keys = d / "keys"
    signing.make_keys(keys, o)
    s = signing.sign(d / "src.zone", keys, d / "out.zone", variant, o)
    _same([_both(s.path.read_text(), o)], seed=len(spec))
