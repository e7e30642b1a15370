"""Target liveness: the initial state from the configuration, one target down, every target of a
region down (fallback regions, then the configured set anyway, or SERVFAIL/NODATA when the
resource says so), and scopes that widen when a failure makes neighbouring answers equal."""
from __future__ import annotations

import dns.rcode

from .mapkit import Mapping, addresses, scope

LINES = ["10.0.0.0/8 eu", "10.1.0.0/16 us", "10.2.0.0/16 ap"]
TARGETS = {"eu1": ["192.0.2.1"], "eu2": ["192.0.2.2"], "us1": ["198.51.100.1"],
           "ap1": ["203.0.113.1"]}
REGIONS = {"eu": ["eu1", "eu2"], "us": ["us1"], "ap": ["ap1"]}


def www(**extra):
    return [{"name": "www.cdn.example.", "regions": REGIONS, **extra}]


def test_initial_state_comes_from_the_configuration():
    m = Mapping(LINES, "us", TARGETS, www(fallback=["us"]),
                live={"eu1": False, "eu2": True, "us1": True, "ap1": True})
    assert addresses(m.ask("www.cdn.example.", ecs=("10.9.0.0", 24))) == ("192.0.2.2",)


def test_initial_down_in_the_toml_is_honoured():
    from pop53.mapping.config import parse
    doc = {"map": [{"name": "m", "file": "x", "default": "us"}],
           "target": [{"name": "a", "addresses": ["192.0.2.1"], "up": False},
                      {"name": "b", "addresses": ["192.0.2.2"]}],
           "mapped": [{"name": "www.cdn.example.", "map": "m", "regions": {"us": ["a", "b"]}}]}
    cfg = parse(doc, "t.toml", zones=["cdn.example."])
    assert {t.name: t.up for t in cfg.targets.values()} == {"a": False, "b": True}


def test_one_down_then_all_down_then_back():
    m = Mapping(LINES, "us", TARGETS, www(fallback=["us"]))
    ask = lambda: m.ask("www.cdn.example.", ecs=("10.9.0.0", 24))  # noqa: E731
    assert addresses(ask()) == ("192.0.2.1", "192.0.2.2")
    m.live["eu1"] = False
    m.rebuild()
    assert addresses(ask()) == ("192.0.2.2",)
    m.live["eu2"] = False
    m.rebuild()
    assert addresses(ask()) == ("198.51.100.1",)            # the fallback region
    m.live["us1"] = False
    m.rebuild()
    assert addresses(ask()) == ("192.0.2.1", "192.0.2.2")   # all down: the configured set
    m.live.update(eu1=True, eu2=True, us1=True)
    m.rebuild()
    assert addresses(ask()) == ("192.0.2.1", "192.0.2.2")


def test_all_down_without_fallback_returns_the_configured_set():
    m = Mapping(LINES, "us", TARGETS, www(), live={"eu1": False, "eu2": False, "us1": True,
                                                    "ap1": True})
    assert addresses(m.ask("www.cdn.example.", ecs=("10.9.0.0", 24))) == ("192.0.2.1", "192.0.2.2")


def test_all_down_servfail_and_nodata_when_the_resource_says_so():
    live = {"eu1": False, "eu2": False, "us1": True, "ap1": True}
    m = Mapping(LINES, "us", TARGETS, www(all_down="servfail"), live=live)
    r = m.ask("www.cdn.example.", ecs=("10.9.0.0", 24))
    assert r.rcode() == dns.rcode.SERVFAIL and not r.answer
    assert addresses(m.ask("www.cdn.example.", ecs=("10.1.0.0", 24))) == ("198.51.100.1",)
    m = Mapping(LINES, "us", TARGETS, www(all_down="nodata"), live=live)
    r = m.ask("www.cdn.example.", ecs=("10.9.0.0", 24))
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority


def test_scope_widens_after_a_failure():
    """eu's /8 has holes for us and ap.  With ap1 down and fallback us, the ap /16 answers
    like its us neighbours, the three /16s merge into one run, and the block around 10.2.x
    widens from /16 to /15; it narrows again when ap1 comes back."""
    m = Mapping(LINES + ["10.3.0.0/16 us"], "us", TARGETS,
                [{"name": "www.cdn.example.", "regions": REGIONS, "fallback": ["us"]}])
    r = m.ask("www.cdn.example.", ecs=("10.2.0.0", 24))
    assert addresses(r) == ("203.0.113.1",) and scope(r) == 16
    m.live["ap1"] = False
    m.rebuild()
    r = m.ask("www.cdn.example.", ecs=("10.2.0.0", 24))
    # 10.1/16 us, 10.2/16 ap->us, 10.3/16 us: one run 10.1.0.0-10.3.255.255; 10.2.0.0/15 fits
    assert addresses(r) == ("198.51.100.1",) and scope(r) == 15
    m.live["ap1"] = True
    m.rebuild()
    assert scope(m.ask("www.cdn.example.", ecs=("10.2.0.0", 24))) == 16


def test_select_limits_the_answer():
    m = Mapping(LINES, "us", TARGETS, www(select=1))
    assert addresses(m.ask("www.cdn.example.", ecs=("10.9.0.0", 24))) == ("192.0.2.1",)
    m.live["eu1"] = False
    m.rebuild()
    assert addresses(m.ask("www.cdn.example.", ecs=("10.9.0.0", 24))) == ("192.0.2.2",)


def test_a_liveness_change_reuses_the_unaffected_tables():
    """Only the answer functions that changed get new merged tables."""
    m = Mapping(LINES, "us", TARGETS,
                www() + [{"name": "other.cdn.example.", "regions": {"eu": ["eu1"], "us": ["us1"],
                                                                     "ap": ["ap1"]}}])
    before = {k: id(v) for k, v in m.builder._views.items()}
    m.live["eu2"] = False          # www's function changes ({eu1,eu2} -> {eu1}), other's not
    m.rebuild()
    after = {k: id(v) for k, v in m.builder._views.items()}
    shared = set(before) & set(after)
    assert shared and all(before[k] == after[k] for k in shared)


def test_reload_reads_maps_only_when_a_file_changed(tmp_path):
    from pop53.mapping.config import parse
    from pop53.mapping.service import MappingState

    (tmp_path / "m.map").write_text("10.0.0.0/8 eu\n")
    doc = {"map": [{"name": "m", "file": str(tmp_path / "m.map"), "default": "us"}],
           "target": [{"name": "a", "addresses": ["192.0.2.1"]}],
           "mapped": [{"name": "www.cdn.example.", "map": "m",
                       "regions": {"us": ["a"], "eu": ["a"]}}]}
    published = []
    state = MappingState(parse(doc, "t.toml", zones=["cdn.example."]),
                         lambda snap, seq: published.append(seq))
    state.publish(1)
    assert state.reload_maps() is False and published == [1]
    (tmp_path / "m.map").write_text("10.0.0.0/8 eu\n11.0.0.0/8 eu\n")
    assert state.reload_maps() is True and published == [1, 2]
    assert state.status()["maps"]["m"]["prefixes"] == 2
