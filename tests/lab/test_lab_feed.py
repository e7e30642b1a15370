"""The feed in the PoP lab: a 3-node NATS JetStream cluster (stream replicas = 3) on the lab's
network, pop53 machines subscribed to it.  The stream's leader node is killed (SIGKILL, by its
PID) while liveness changes are being published: every change is still applied and served by
every machine, and no query (asked of each machine directly, and of the anycast address by the
clients) goes unanswered."""
from __future__ import annotations

import json
import os
import time

import pytest

from pop53.lab.pop import Lab, LabConfig
from pop53.lab.probe import read_client_log

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]


def test_a_nats_node_killed_while_publishing_stops_nothing(tmp_path):
    cfg = LabConfig(machines=2, clients=2, agents=False, feed_nodes=3, server="pop53")
    with Lab(cfg, workdir=tmp_path) as lab:
        r = lab.feed.run_in_client(["stream", "--servers", ",".join(lab.feed.urls),
                                    "--replicas", "3"])
        assert r.returncode == 0, r.stderr
        leader = json.loads(r.stdout)["leader"]
        assert leader in ("n1", "n2", "n3")
        lab.wait_fib(lambda ms: len(ms) == 2, timeout=30)   # both machines behind the router
        clients = lab.start_clients(duration=14, interval=0.05, timeout=1.0)
        out = tmp_path / "flips.json"
        probe = lab.feed.probe(out, "liveness", count=80, interval=0.1, timeout=10,
                               deadline=40)
        time.sleep(3)
        assert probe.alive(), probe.tail()
        killed_at = time.monotonic()
        pid = lab.feed.kill(int(leader[1]))
        assert pid > 0 and not lab.feed.procs[int(leader[1])].alive()
        probe.popen.wait(90)
        for _, p, _ in clients:
            p.popen.wait(30)
        assert probe.popen.returncode == 0, probe.tail()
        res = json.loads(out.read_text())
        changes = res["changes"]
        before = [c for c in changes if c["t0"] < killed_at]
        after = [c for c in changes if c["t0"] >= killed_at]
        assert len(before) >= 5 and len(after) >= 20, (len(before), len(after))
        # every change was applied and served by every machine, before and after the kill
        missed = [(c["i"], c["served"]) for c in changes if None in c["served"]]
        assert not missed and len(changes) == 80, missed
        assert res["unanswered"] == [0, 0], res          # each machine, asked directly
        for m in lab.machines:
            assert m.procs["dns"].alive(), m.procs["dns"].tail()
        for name, _, f in clients:                        # the anycast address
            log = read_client_log(f)
            assert len(log) > 100 and all(ok for _, ok, _ in log), name
        worst = max(max(c["served"]) for c in after)
        lag = max(max(c["served"]) - c["published"] for c in after)
        print(f"leader {leader} killed; {len(after)} changes after it, slowest {worst:.3f} s "
              f"({lag:.3f} s after its publish was acknowledged), "
              f"{res['publish_retries']} publish retries")


def test_a_stale_feed_suspends_one_machine_per_slot_and_never_the_input_delayed_one(tmp_path):
    """Agents read feed-status.json beside their probes (etcd, K = 1 slot).  The heartbeat
    publisher is stopped (by PID): the two normal machines go stale, one suspends holding the
    slot, the other may not and keeps answering; the input-delayed machine (announced as a
    backup, so not in the router's FIB while a normal one is) never suspends.  Heartbeats
    again: both normal machines announce."""
    cfg = LabConfig(machines=3, clients=1, agents=True, slots=1, feed_nodes=3,
                    input_delayed=(3,), feed_stale_after=2.0, server="pop53")
    with Lab(cfg, workdir=tmp_path) as lab:
        m1, m2, m3 = lab.machines
        lab.wait_fib(lambda ms: ms == ["m1", "m2"], timeout=40)
        lab.wait_agent(m3, lambda st: st["state"] == "serving" and st["announced"])
        lab.feed.heartbeat.stop()
        deadline = time.monotonic() + 30
        states: list = []
        while time.monotonic() < deadline:
            states = [lab.agent_state(m) or {} for m in (m1, m2)]
            if sorted(st.get("state", "") for st in states) == ["suspended", "wants-suspend"]:
                break
            time.sleep(0.1)
        assert sorted(st.get("state", "") for st in states) == ["suspended", "wants-suspend"], \
            states
        held = [st for st in states if st["state"] == "suspended"][0]
        other = [st for st in states if st["state"] == "wants-suspend"][0]
        assert held["slot"] is not None and "feed-status.json" in held["reason"], held
        assert "no free suspension slot" in other["reason"] and other["announced"], other
        lab.wait_fib(lambda ms: ms == [other["name"]], timeout=20)
        st3 = lab.agent_state(m3)
        assert st3["state"] == "serving" and st3["announced"] and st3["last_probe"]["ok"], st3
        lab.feed.start_heartbeats()
        lab.wait_fib(lambda ms: ms == ["m1", "m2"], timeout=40)
