"""pop53.clouds: unique delegation sets (§3.1, §4.3.1), zones' apex NS against them, the shared
zones' 13 clouds, and no PoP advertising more than two clouds (§4.3)."""
from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from collections import Counter

import pytest

from pop53.anycast import bird
from pop53.clouds import allocate as al
from pop53.clouds import check
from pop53.clouds.plan import load_plan, parse_plan
from pop53.errors import ConfigError
from pop53.zone.zonefile import zone_from_text
import dns.name


def plan_doc(n=24, set_size=6, shared_size=13, enterprises=(), pops=(), shared=()):
    return {
        "set_size": set_size, "shared_size": shared_size,
        "cloud": [{"name": f"c{i}", "ns": f"ns{i}.clouds.test.",
                   "prefixes": [f"198.18.{i}.0/24", f"2001:db8:{i:x}::/48"]} for i in range(n)],
        "enterprise": [{"name": e, "zones": [f"{e}.test."]} for e in enterprises],
        "shared": [{"zone": z} for z in shared],
        "pop": list(pops),
    }


def test_unrank_is_a_bijection_on_small_spaces():
    for n, k in ((6, 2), (8, 3), (10, 5)):
        subsets = [al.unrank(r, n, k) for r in range(math.comb(n, k))]
        assert subsets == list(itertools.combinations(range(n), k))
        assert all(al.rank_of(s, n, k) == r for r, s in enumerate(subsets))


def test_every_one_of_the_134596_sets_is_handed_out_once():
    seen = set(al.candidates(24, 6))
    assert len(seen) == math.comb(24, 6) == 134_596
    assert all(len(s) == 6 and len(set(s)) == 6 for s in itertools.islice(seen, 1000))


def test_allocation_is_unique_even_and_stable():
    plan = parse_plan(plan_doc(enterprises=[f"e{i}" for i in range(1000)]))
    state = al.allocate(plan, {}, [e.name for e in plan.enterprises])
    sets = list(state.values())
    assert len(set(sets)) == 1000
    # Equal size + unique: saturating all of one enterprise's clouds leaves every other
    # enterprise at least one cloud.
    for a, b in itertools.islice(itertools.combinations(sets, 2), 200_000):
        assert set(b) - set(a)
    usage = Counter(i for s in sets for i in s)
    assert len(usage) == 24
    assert max(usage.values()) - min(usage.values()) <= 0.2 * (6000 / 24), usage
    # Existing allocations never move; new ones avoid them.
    more = al.allocate(plan, state, ["e5", "late"])
    assert list(more) == ["late"] and more["late"] not in sets


def test_allocation_refuses_cleanly_past_the_number_of_sets():
    plan = parse_plan(plan_doc(n=8, set_size=3, shared_size=8))
    state = al.allocate(plan, {}, [f"e{i}" for i in range(56)])
    assert len(set(state.values())) == 56 == math.comb(8, 3)
    with pytest.raises(al.Exhausted, match=r"no delegation set left for 'e56'.*C\(8,3\) = 56"):
        al.allocate(plan, state, ["e56"])


def test_state_file_round_trip_and_errors(tmp_path):
    plan = parse_plan(plan_doc(enterprises=["a", "b"]))
    path = tmp_path / "sets.tsv"
    state = al.allocate(plan, {}, ["a", "b"])
    al.write_state(plan, path, state)
    assert al.read_state(plan, path) == state
    bad = {
        "a\tc0,c1,c2,c3,c4\n": "5 distinct clouds, the plan says 6",
        "a\tc0,c1,c2,c3,c4,c99\n": "unknown cloud 'c99'",
        "a\tc0,c1,c2,c3,c4,c5\nb\tc5,c4,c3,c2,c1,c0\n": ":2: 'b' has the same delegation set as 'a'",
        "a\tc0,c1,c2,c3,c4,c5\na\tc0,c1,c2,c3,c4,c6\n": ":2: enterprise 'a' allocated twice",
        "a c0,c1\n": ":1: expected NAME<TAB>",
    }
    for text, msg in bad.items():
        path.write_text(text)
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            al.read_state(plan, path)


@pytest.mark.parametrize("doc,key", [
    ({"cloud": [{"name": "a", "ns": "ns.a.test."}], "set_size": 2}, "set_size"),
    ({"cloud": [{"name": "a", "ns": "ns.a.test"}]}, "cloud[0].ns"),
    ({"cloud": [{"name": "a", "ns": "n.test.", "prefixes": ["10.0.0.0/8"]},
                {"name": "b", "ns": "m.test.", "prefixes": ["10.1.0.0/16"]}]}, "cloud[1].prefixes"),
    ({"cloud": [{"name": "a", "ns": "n.test.", "colour": 1}]}, "cloud[0].colour"),
    ({"clouds": []}, "clouds"),
])
def test_plan_errors_name_the_key(doc, key):
    with pytest.raises(ConfigError) as e:
        parse_plan(doc, "clouds.toml")
    assert e.value.key == key and str(e.value).startswith(f"clouds.toml:{key}: ")


def zone(origin: str, ns: list[str]):
    text = (f"$ORIGIN {origin}\n$TTL 300\n@ SOA ns0.clouds.test. h 1 2 3 4 5\n"
            + "".join(f"@ NS {n}\n" for n in ns) + "www A 192.0.2.1\n")
    return zone_from_text(text, dns.name.from_text(origin), f"{origin}zone")


def test_zone_apex_ns_must_be_its_delegation_set():
    plan = parse_plan(plan_doc(enterprises=["ex"], shared=["cdn.test."]))
    state = al.allocate(plan, {}, ["ex"])
    good = [f"ns{i}.clouds.test." for i in state["ex"]]
    assert check.check_zones(plan, state, [zone("ex.test.", good)]) == []
    wrong = good[:5] + ["ns.elsewhere.test."]
    [p] = check.check_zones(plan, state, [zone("ex.test.", wrong)])
    assert "zone ex.test." in p.where
    assert f"missing {good[5]}" in p.message and "not in the set ns.elsewhere.test." in p.message
    shared = [f"ns{i}.clouds.test." for i in range(13)]
    assert check.check_zones(plan, state, [zone("cdn.test.", shared)]) == []
    [p] = check.check_zones(plan, state, [zone("cdn.test.", shared[:12])])
    assert "delegated to 12 clouds, the plan says 13" in p.message
    assert check.check_allocations(plan, {}) [0].message.startswith("has no delegation set")


def node_conf(tmp_path, name, prefixes):
    cfg = bird.NodeConfig(router_id="192.0.2.1", local_as=65053, neighbors=[
        bird.Neighbor("192.0.2.1", "192.0.2.254", 65000)], service=prefixes, signal="address")
    path = tmp_path / f"{name}.conf"
    path.write_text(bird.render_node_config(cfg))
    return str(path)


def test_no_pop_advertises_more_than_two_clouds(tmp_path):
    m1 = node_conf(tmp_path, "m1", ["198.18.0.53/32", "2001:db8:0::53/128"])
    m2 = node_conf(tmp_path, "m2", ["198.18.1.53/32"])
    m3 = node_conf(tmp_path, "m3", ["198.18.2.53/32"])
    assert bird.service_prefixes(open(m1).read()) == ["198.18.0.53/32", "2001:db8::53/128"]
    ok = parse_plan(plan_doc(pops=[{"name": "fra", "bird": [m1, m2]},
                                   {"name": "ams", "clouds": ["c3"], "prefixes": ["198.18.4.1/32"]}]))
    assert check.check_pops(ok) == []
    three = parse_plan(plan_doc(pops=[{"name": "fra", "bird": [m1, m2, m3]}]))
    [p] = check.check_pops(three)
    assert p.where == "pop fra" and "advertises 3 clouds (c0, c1, c2); at most 2" in p.message
    stray = parse_plan(plan_doc(pops=[{"name": "lhr", "prefixes": ["203.0.113.0/24"]}]))
    [p] = check.check_pops(stray)
    assert "203.0.113.0/24, which belongs to no cloud" in p.message


def pop53(*args, cwd):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "pop53", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_allocate_check_show(tmp_path):
    lines = ["set_size = 6", "shared_size = 13"]
    for i in range(24):
        lines += ["[[cloud]]", f'name = "c{i}"', f'ns = "ns{i}.clouds.test."',
                  f'prefixes = ["198.18.{i}.0/24"]']
    lines += ["[[enterprise]]", 'name = "ex"', 'zones = ["ex.test."]']
    (tmp_path / "clouds.toml").write_text("\n".join(lines) + "\n")
    r = pop53("clouds", "allocate", "-p", "clouds.toml", "-s", "sets.tsv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "1 new, 1 allocated" in r.stdout
    ns = r.stdout.splitlines()[0].split(": ")[1].split()
    assert len(ns) == 6
    zf = tmp_path / "ex.zone"
    zf.write_text("$ORIGIN ex.test.\n$TTL 300\n@ SOA ns0.clouds.test. h 1 2 3 4 5\n"
                  + "".join(f"@ NS {n}\n" for n in ns))
    r = pop53("clouds", "check", "-p", "clouds.toml", "-s", "sets.tsv", "--zone", "ex.zone",
              cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("ok: 1 delegation sets, 1 zones"), r.stderr
    zf.write_text(zf.read_text().replace(ns[0], "ns.other.test."))
    r = pop53("clouds", "check", "-p", "clouds.toml", "-s", "sets.tsv", "--zone", "ex.zone",
              cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "zone ex.test.: apex NS must be" in r.stderr
    r = pop53("clouds", "show", "-p", "clouds.toml", "-s", "sets.tsv", cwd=tmp_path)
    assert r.stdout.startswith("ex\t") and "usage: c0=" in r.stdout
    (tmp_path / "clouds.toml").write_text("[[cloud]]\nname = 1\n")
    r = pop53("clouds", "show", "-p", "clouds.toml", "-s", "sets.tsv", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == "pop53: error: clouds.toml:cloud[0].name: missing name"
