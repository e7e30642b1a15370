"""End to end through a real `pop53 serve` process over UDP and TCP with ECS: mapped answers
and scopes, `pop53 ctl target NAME down|up` (a new snapshot, visible without a reload), a bad
map on reload rejected while the old maps keep serving, a good one taken, and the embedded
example's CDN chain (`pop53 serve --example`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dns.edns
import dns.flags
import dns.message
import dns.query
import pytest

ZONE = """$ORIGIN cdn.example.
$TTL 3600
@    SOA ns1 host 1 7200 3600 1209600 300
@    NS  ns1
ns1  A   192.0.2.53
www  CNAME e1
"""
CONFIG = """[server]
listen = ["127.0.0.1:0"]
workers = 1
control = "{ctl}"
[[zone]]
name = "cdn.example."
file = "cdn.zone"
[[map]]
name = "world"
file = "world.map"
default = "us"
[[target]]
name = "eu1"
addresses = ["192.0.2.10", "2001:db8::10"]
[[target]]
name = "us1"
addresses = ["198.51.100.1"]
[[target]]
name = "ap1"
addresses = ["203.0.113.1"]
up = false
[[mapped]]
name = "e1.cdn.example."
map = "world"
ttl = 20
regions = {{ eu = ["eu1"], us = ["us1"], ap = ["ap1"] }}
fallback = ["us"]
"""


class Proc:
    def __init__(self, args, cwd):
        self.p = subprocess.Popen([sys.executable, "-m", "pop53", *args], cwd=cwd,
                                  stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                  start_new_session=True)
        self.port = None
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            line = self.p.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "listening on 127.0.0.1 port" in line:
                self.port = int(line.split("port")[1].split()[0])
                break
        if self.port is None:
            self.stop()
            raise AssertionError("pop53 serve did not start:\n" + "".join(lines))

    def stop(self):
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait(5)


def ask(port, name, qtype="A", ecs=None, tcp=False):
    opts = [dns.edns.ECSOption(*ecs)] if ecs else []
    q = dns.message.make_query(name, qtype, use_edns=0, options=opts)
    f = dns.query.tcp if tcp else dns.query.udp
    return f(q, "127.0.0.1", port=port, timeout=3)


def addrs(r):
    return sorted(x.address for rrs in r.answer if rrs.rdtype in (1, 28) for x in rrs)


def scope(r):
    return next((o.scopelen for o in r.options if o.otype == 8), None)


def ctl(cwd, *cmd):
    p = subprocess.run([sys.executable, "-m", "pop53", "ctl", "--json", "-s", os.path.join(cwd, "ctl.sock"),
                        *cmd], capture_output=True, text=True, timeout=30)
    import json
    return json.loads(p.stdout)


@pytest.fixture
def served(tmp_path):
    (tmp_path / "cdn.zone").write_text(ZONE)
    (tmp_path / "world.map").write_text("10.0.0.0/8 eu\n10.1.0.0/16 us\n1.0.0.0/8 ap\n"
                                        "127.0.0.0/8 eu\n2001:db8::/32 eu\n")
    (tmp_path / "pop53.toml").write_text(CONFIG.format(ctl=tmp_path / "ctl.sock"))
    p = Proc(["serve", "-c", "pop53.toml"], str(tmp_path))
    yield p, str(tmp_path)
    p.stop()


def test_mapped_answers_liveness_and_reload(served):
    p, cwd = served
    r = ask(p.port, "www.cdn.example.", ecs=("10.9.0.0", 24))
    assert [x.to_text() for x in r.answer[0]] == ["e1.cdn.example."]
    assert addrs(r) == ["192.0.2.10"] and scope(r) == 13      # 10.8.0.0/13 is all eu
    r = ask(p.port, "www.cdn.example.", ecs=("10.1.2.0", 24), tcp=True)
    assert addrs(r) == ["198.51.100.1"] and scope(r) == 16
    r = ask(p.port, "e1.cdn.example.", "AAAA", ecs=("2001:db8:1::", 48))
    assert addrs(r) == ["2001:db8::10"] and scope(r) == 32
    r = ask(p.port, "e1.cdn.example.")           # no ECS: the source 127.0.0.1 is eu
    assert addrs(r) == ["192.0.2.10"] and scope(r) is None
    # ap1 starts down (explicit initial state): ap falls back to us
    assert addrs(ask(p.port, "e1.cdn.example.", ecs=("1.2.3.0", 24))) == ["198.51.100.1"]

    # liveness through the control socket: no reload, a new snapshot
    t0 = time.monotonic()
    assert ctl(cwd, "target", "eu1", "down")["changed"] is True
    while addrs(ask(p.port, "e1.cdn.example.", ecs=("10.9.0.0", 24))) != ["198.51.100.1"]:
        assert time.monotonic() - t0 < 5, "the liveness change never became visible"
        time.sleep(0.005)
    # eu and ap (ap1 down) both fall back to us: one answer everywhere, scope 0
    assert scope(ask(p.port, "e1.cdn.example.", ecs=("10.9.0.0", 24))) == 0
    assert ctl(cwd, "target", "ap1", "up")["ok"]
    assert addrs(ask(p.port, "e1.cdn.example.", ecs=("1.2.3.0", 24))) == ["203.0.113.1"]
    assert ctl(cwd, "target", "nobody", "up")["ok"] is False
    status = ctl(cwd, "mapping")
    assert status["targets"] == {"eu1": False, "us1": True, "ap1": True}
    assert status["maps"]["world"]["prefixes"] == 5

    # a bad map on reload: rejected with file:line, the old maps keep serving
    with open(os.path.join(cwd, "world.map"), "a") as f:
        f.write("10.1.2.3/24 eu\n")
    rep = ctl(cwd, "reload")
    assert rep["ok"] is False and "world.map:6: bad prefix" in rep["error"]
    assert addrs(ask(p.port, "e1.cdn.example.", ecs=("1.2.3.0", 24))) == ["203.0.113.1"]
    # a good one is taken (and the liveness is kept)
    with open(os.path.join(cwd, "world.map"), "w") as f:
        f.write("1.0.0.0/8 eu\n")
    assert ctl(cwd, "reload")["ok"] is True
    assert addrs(ask(p.port, "e1.cdn.example.", ecs=("1.2.3.0", 24))) == ["198.51.100.1"]
    assert ctl(cwd, "target", "eu1", "up")["ok"]
    r = ask(p.port, "e1.cdn.example.", ecs=("1.2.3.0", 24))
    assert addrs(r) == ["192.0.2.10"] and scope(r) == 8


def test_static_clash_refused_at_start_and_on_reload(served):
    """Static data clashing with a mapped name (CNAME exclusivity, RFC 2181 §10.1): a reload
    bringing it is rejected and the old data keeps serving; `serve` refuses to start with it,
    naming the config key as `pop53 check` does.  Another type beside the name is fine."""
    p, cwd = served
    zone = os.path.join(cwd, "cdn.zone")
    with open(zone, "w") as f:
        f.write(ZONE.replace(" 1 7200", " 2 7200") + "e1 TXT \"beside\"\n")
    assert ctl(cwd, "reload")["ok"] is True
    with open(zone, "w") as f:
        f.write(ZONE.replace(" 1 7200", " 3 7200") + "e1 CNAME elsewhere.example.\n")
    rep = ctl(cwd, "reload")
    assert rep["ok"] is False and "mapped[0].name" in rep["error"] and \
        "has static CNAME" in rep["error"]
    assert addrs(ask(p.port, "e1.cdn.example.", ecs=("10.9.0.0", 24))) == ["192.0.2.10"]
    r = ask(p.port, "e1.cdn.example.", "TXT")
    assert [x.to_text() for x in r.answer[0]] == ['"beside"']
    p.stop()
    out = subprocess.run([sys.executable, "-m", "pop53", "serve", "-c", "pop53.toml"], cwd=cwd,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "mapped[0].name" in out.stderr and \
        "has static CNAME" in out.stderr, out.stderr[-500:]


def test_example_cdn_chain(tmp_path):
    p = Proc(["serve", "--example", "--listen", "127.0.0.1:0", "--workers", "1"], str(tmp_path))
    try:
        a = ask(p.port, "www.example.net.", ecs=("1.2.4.0", 24))
        b = ask(p.port, "www.example.net.", ecs=("1.2.3.0", 24))
        assert addrs(a) != addrs(b) and scope(a) == 22 and scope(b) == 24
        r = ask(p.port, "img.example.net.", ecs=("1.2.4.0", 24))      # CNAME into the referral
        assert not r.flags & dns.flags.AA or r.answer
        assert r.authority[0].rdtype == 2 and r.authority[0].ttl == 4000 and r.additional
        r = ask(p.port, "www.example.com.", ecs=("1.2.4.0", 24))       # static: scope 0
        assert scope(r) == 0 and r.answer
    finally:
        p.stop()


def test_mapped_replies_are_counted_in_metrics(tmp_path):
    """pop53_mapped_replies{key}: a trusted ECS option, the source address (no ECS), UDP and
    TCP; a static answer is not counted."""
    import re
    import socket
    import urllib.request
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    mport = s.getsockname()[1]
    s.close()
    (tmp_path / "cdn.zone").write_text(ZONE)
    (tmp_path / "world.map").write_text("10.0.0.0/8 eu\n127.0.0.0/8 us\n")
    cfg = CONFIG.format(ctl=tmp_path / "ctl.sock").replace(
        "workers = 1\n", f'workers = 1\nmetrics = "127.0.0.1:{mport}"\n')
    (tmp_path / "pop53.toml").write_text(cfg)
    p = Proc(["serve", "-c", "pop53.toml"], str(tmp_path))
    try:
        assert addrs(ask(p.port, "e1.cdn.example.", ecs=("10.9.0.0", 24))) == ["192.0.2.10"]
        assert addrs(ask(p.port, "e1.cdn.example.", ecs=("10.9.0.0", 24), tcp=True)) == ["192.0.2.10"]
        assert addrs(ask(p.port, "e1.cdn.example.")) == ["198.51.100.1"]          # 127/8: us
        assert ask(p.port, "ns1.cdn.example.").answer                              # static

        def count(key):
            body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
            m = re.search(r'^pop53_mapped_replies_total\{key="%s"\} (\S+)$' % key, body, re.M)
            return float(m.group(1)) if m else None

        deadline = time.monotonic() + 5
        while count("source") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (count("ecs"), count("source"), count("default")) == (2, 1, 0)
    finally:
        p.stop()
