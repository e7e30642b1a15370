"""The input-delayed machine (paper §4.2.3) end to end: two `pop53 serve` secondaries of one
Knot primary, one normal and one input-delayed.  A poisonous update (the answer a regression
case checks changes) reaches the normal machine at once and its monitoring agent's probe fails;
the delayed machine keeps answering with the previous data, is exempt from staleness, and would
announce with a worse MED (so routers use it only once the normal machines withdrew)."""
from __future__ import annotations

import json
import time

import dns.message
import dns.query
import pytest

from xfr_support import a_records, free_port, start_pop53_secondary, stop_process, wait_for
from test_knot_primary import ZONE, knot_primary

from pop53.anycast.agent_config import config_from_dict
from pop53.anycast.probe import Prober
from pop53.anycast import bird
from pop53.anycast.staleness import STATE_FILE

pytestmark = pytest.mark.peers


def start(tmp_path, name, port, knot_port, delay=0.0):
    d = tmp_path / name
    xfr = f"delay = {delay}\nrole = \"delayed\"\n" if delay else ""
    return start_pop53_secondary(d, port, knot_port, ZONE, identity=name, xfr_extra=xfr), d


def prober(port, state_file):
    cfg = config_from_dict({
        "name": "probe", "server": f"127.0.0.1:{port}", "zones": [ZONE],
        "cases": [{"qname": "www." + ZONE, "qtype": "A", "expect": ["192.0.2.1"]}],
        "staleness": {"source": "xfr-status", "max_age": 3600, "path": str(state_file)},
    })
    return Prober(cfg)


def test_poisonous_update_spares_the_input_delayed_machine(knot_factory, tmp_path):
    p_normal, p_delayed = free_port(), free_port()
    k = knot_primary(knot_factory, p_normal)
    # Knot notifies the normal machine; the delayed one polls (refresh) or is notified too —
    # either way it must hold the update back for `delay` seconds.
    normal, dn = start(tmp_path, "normal", p_normal, k.port)
    delayed, dd = start(tmp_path, "delayed", p_delayed, k.port, delay=600)
    try:
        wait_for(lambda: a_records(p_normal, "www." + ZONE) == ["192.0.2.1"], 20, what="normal serves")
        wait_for(lambda: a_records(p_delayed, "www." + ZONE) == ["192.0.2.1"], 20, what="delayed serves")
        # the engine's state file (pop53.anycast.staleness), rewritten every status_interval
        state_n, state_d = dn / "state" / STATE_FILE, dd / "state" / STATE_FILE
        wait_for(lambda: state_n.exists() and state_d.exists(), 10, what="the engines' state files")
        wait_for(lambda: prober(p_normal, state_n).run().ok, 10, what="normal probe passes")
        wait_for(lambda: prober(p_delayed, state_d).run().ok, 10, what="delayed probe passes")
        assert prober(p_normal, state_n).run().ok
        assert prober(p_delayed, state_d).run().ok

        # the poisonous update
        k.change(ZONE, ("www", "300", "A", "203.0.113.66"), unsets=(("www", "A"),))
        wait_for(lambda: a_records(p_normal, "www." + ZONE) == ["203.0.113.66"], 15,
                 what="the poison reaches the normal machine")
        bad = prober(p_normal, state_n).run()
        assert not bad.ok and any(f.kind == "wrong" for f in bad.failures), bad

        # the delayed machine has seen the new serial (it is pending) but still answers the old
        # data, and its probe passes
        refresh = dns.message.make_query(ZONE, "SOA")
        dns.query.udp(refresh, "127.0.0.1", port=p_delayed, timeout=1)
        time.sleep(2)
        assert a_records(p_delayed, "www." + ZONE) == ["192.0.2.1"]
        good = prober(p_delayed, state_d).run()
        assert good.ok, good
        st = json.loads(state_d.read_text())
        assert st.get("role") == "delayed"
    finally:
        out_n, out_d = stop_process(normal), stop_process(delayed)
    assert normal.returncode == 0, out_n
    assert delayed.returncode == 0, out_d

    # and it announces with a worse MED than a normal machine (BGP prefers the lower MED)
    def node(role):
        return bird.NodeConfig(router_id="10.53.0.1", local_as=65001,
                               neighbors=[bird.Neighbor("10.53.0.1", "10.53.0.254", 65000)],
                               service=["10.53.0.53/32"], role=role)
    n, d = node("normal"), node("input-delayed")
    assert d.effective_med > n.effective_med
    assert f"bgp_med = {d.effective_med}" in bird.render_node_snippet(d)
    assert f"bgp_med = {n.effective_med}" in bird.render_node_snippet(n)
