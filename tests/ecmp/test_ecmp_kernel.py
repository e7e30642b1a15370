"""The emulator (pop53.ecmp, pop53.ecmp.reuseport) against the running kernel.

A router namespace forwards two anycast addresses per family over veth links to machine
namespaces (multipath route, fixed fib_multipath_hash_seed); every machine answers DNS
queries on W SO_REUSEPORT sockets carrying pop53's cBPF program.  For random flows the
kernel's choice -- from `ip route get ... iif` and from real packets answered by the
machines -- must equal the emulator's prediction, flow for flow.  Negative controls check
that the comparison can fail.  The lab (namespaces p53e-<tag>-*) is always torn down.
"""
from __future__ import annotations

import os
import select
import socket
import subprocess

import numpy as np
import pytest

from pop53.ecmp.model import kernel_select, moved_share
from pop53.ecmp import reuseport
from pop53.ecmp.verify import EcmpLab, unique_flows

MACHINES = 4
WORKERS = 3
SEED = 0x5053E
FLOWS = 2000

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


@pytest.fixture(scope="module")
def lab():
    with EcmpLab(MACHINES, WORKERS, seed=SEED) as lab:
        yield lab
    leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"p53e-{lab.tag}-" not in leftover


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(20)
    return {fam: unique_flows(FLOWS, fam, rng) for fam in (4, 6)}


@root
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("policy", [0, 1, 3])
def test_route_get_equals_emulator(lab, batches, family, policy):
    flows = batches[family]
    lab.set_policy(family, policy, 0x37)
    got = np.array(lab.route_get(flows))
    # `ip route get iif` builds a packet for IPv4 but looks IPv6 up by flow only.
    pred = kernel_select(flows, MACHINES, policy=policy, seed=SEED, fields=0x37,
                         forwarded=(family == 4))
    assert set(got.tolist()) == set(range(MACHINES))
    assert (pred == got).sum() == len(flows)
    # Negative controls: a wrong seed or the other hash path agrees only by chance.
    wrong = kernel_select(flows, MACHINES, policy=policy, seed=SEED + 1, fields=0x37,
                          forwarded=(family == 4))
    assert (wrong == got).mean() < 0.5
    if policy == 3:
        other = kernel_select(flows, MACHINES, policy=3, seed=SEED, fields=0x37,
                              forwarded=(family != 4))
        assert (other == got).mean() < 0.5


@root
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("policy", [0, 1, 3])
def test_packets_reach_the_predicted_machine_and_worker(lab, batches, family, policy):
    flows = batches[family]
    lab.set_policy(family, policy, 0x37)
    answers = np.array(lab.send_queries(flows)).reshape(-1, 2)
    assert (answers[:, 0] >= 0).all(), "every query must be answered"
    machine = kernel_select(flows, MACHINES, policy=policy, seed=SEED, fields=0x37)
    worker = reuseport.predict_socket_flows(flows, WORKERS)
    assert (answers[:, 0] == machine).sum() == len(flows)
    assert (answers[:, 1] == worker).sum() == len(flows)
    assert set(answers[:, 1].tolist()) == set(range(WORKERS))


@root
@pytest.mark.root
@pytest.mark.slow
def test_weights_and_withdrawal_move_the_predicted_flows(lab, batches):
    flows = batches[4]
    lab.set_policy(4, 1)
    before = np.array(lab.route_get(flows))
    try:
        lab.set_weights([1, 0, 1, 1])     # m1 withdrawn
        after = np.array(lab.route_get(flows))
        pred = kernel_select(flows, [1, 0, 1, 1], policy=1, seed=SEED)
        assert (pred == after).all()
        assert 1 not in after.tolist()
        # The kernel moves exactly the flows the emulator says it moves, and with
        # hash-threshold that includes flows of machines that stayed (the regions shift).
        moved_k, avoid_k = moved_share(before, after, [1])
        moved_e, avoid_e = moved_share(
            kernel_select(flows, MACHINES, policy=1, seed=SEED), pred, [1])
        assert (moved_k, avoid_k) == (moved_e, avoid_e)
        assert avoid_k > 0.05
        answers = np.array(lab.send_queries(flows.subset(np.arange(500)))).reshape(-1, 2)
        assert (answers[:, 0] == pred[:500]).all()
        # Unequal weights.
        lab.set_weights([1, 2, 0, 1])
        got = np.array(lab.route_get(flows))
        pred = kernel_select(flows, [1, 2, 0, 1], policy=1, seed=SEED)
        assert (pred == got).all()
        assert abs((got == 1).mean() - 0.5) < 0.05  # m1 has weight 2 of 4
    finally:
        lab.set_weights([1] * MACHINES)


def test_reuseport_cbpf_on_loopback_matches_prediction():
    """No namespace needed: W sockets on loopback, queries from fresh source ports."""
    for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        workers = 5
        socks, port = [], 0
        try:
            for _ in range(workers):
                s = socket.socket(fam, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((addr, port))
                port = s.getsockname()[1]
                socks.append(s)
            reuseport.attach_cbpf(socks[0], workers)
            seen = set()
            for _ in range(200):
                with socket.socket(fam, socket.SOCK_DGRAM) as c:
                    c.bind((addr, 0))
                    c.sendto(b"q", (addr, port))
                    ready, _, _ = select.select(socks, [], [], 2.0)
                    assert ready, "datagram not delivered"
                    got = socks.index(ready[0])
                    ready[0].recvfrom(16)
                    want = reuseport.predict_socket(addr, c.getsockname()[1], addr, port,
                                                    workers)
                    assert got == want
                    seen.add(got)
            assert seen == set(range(workers))
        finally:
            for s in socks:
                s.close()


def test_attach_refuses_sockets_without_reuseport():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(reuseport.ReuseportError, match="SO_REUSEPORT"):
            reuseport.attach_cbpf(s, 2)


@root
@pytest.mark.root
@pytest.mark.slow
def test_pop53_serve_answers_from_the_predicted_machine():
    """The same check with `pop53 serve --identity m<i>` answering id.server."""
    rng = np.random.default_rng(21)
    with EcmpLab(3, 2, seed=SEED, server="pop53") as lab:
        for family in (4, 6):
            flows = unique_flows(1000, family, rng)
            lab.set_policy(family, 1)
            answers = np.array(lab.send_queries(flows)).reshape(-1, 2)
            pred = kernel_select(flows, 3, policy=1, seed=SEED)
            assert (answers[:, 0] == pred).all()
            assert set(answers[:, 0].tolist()) == {0, 1, 2}
