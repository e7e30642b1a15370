"""An RFC 7871 resolver cache in front of pop53: resolvers with different source lengths
(/0, /16, /20, /24, /32; IPv6 /48, /56) forward their clients' queries with ECS, cache each
answer for the block SCOPE names (§7.3.1: the scope, at most the source length sent) and serve
later clients from it (§7.3.2).  No client may ever receive an answer different from the one
pop53 gives that client's own query directly."""
from __future__ import annotations

import ipaddress
import random

from .mapkit import Mapping, addresses, scope

TARGETS = {f"t{i}": [f"192.0.2.{i + 1}", f"2001:db8::{i + 1}"] for i in range(4)}
REGIONS = {"r0": ["t0"], "r1": ["t1"], "r2": ["t2"], "r3": ["t3", "t0"], "r4": ["t1"]}


def random_map(rng: random.Random) -> list[str]:
    lines = set()
    for _ in range(60):
        length = rng.choice([8, 12, 16, 18, 20, 22, 24, 26, 30, 32])
        base = rng.choice([10 << 24, 172 << 24 | 16 << 16, 192 << 24 | 168 << 16])
        addr = (base | rng.getrandbits(20)) >> (32 - length) << (32 - length)
        lines.add((str(ipaddress.ip_network((addr, length))), rng.choice(list(REGIONS))))
    for _ in range(20):
        length = rng.choice([32, 40, 48, 52, 56, 64])
        addr = (0x20010DB8 << 96 | rng.getrandbits(32) << 64) >> (128 - length) << (128 - length)
        lines.add((str(ipaddress.ip_network((addr, length))), rng.choice(list(REGIONS))))
    seen, out = set(), []
    for p, r in sorted(lines):
        if p not in seen:
            seen.add(p)
            out.append(f"{p} {r}")
    return out


class Resolver:
    """A caching resolver that sends `source` bits of its clients' addresses."""

    def __init__(self, m: Mapping, source: int, version: int, own: str):
        self.m, self.source, self.version, self.own = m, source, version, own
        self.cache: list[tuple] = []     # (network, answer)
        self.hits = 0

    def _ecs(self, client: str):
        net = ipaddress.ip_network(f"{client}/{self.source}", strict=False)
        return str(net.network_address), self.source

    def resolve(self, client: str, qtype: str):
        addr = ipaddress.ip_address(client)
        for net, qt, answer in self.cache:
            if qt == qtype and addr in net:
                self.hits += 1
                return answer
        reply = self.m.ask("www.cdn.example.", qtype, ecs=self._ecs(client), client=self.own)
        answer = addresses(reply, qtype)
        sc = scope(reply)
        # §7.3.1: cache for the SCOPE block, never wider than what was sent
        plen = min(sc, self.source)
        self.cache.append((ipaddress.ip_network(f"{client}/{plen}", strict=False), qtype, answer))
        return answer

    def direct(self, client: str, qtype: str):
        return addresses(self.m.ask("www.cdn.example.", qtype, ecs=self._ecs(client),
                                    client=self.own), qtype)


def _clients(rng, version, n):
    out = []
    for _ in range(n):
        if version == 4:
            base = rng.choice([10 << 24, 172 << 24 | 16 << 16, 192 << 24 | 168 << 16, 8 << 24])
            out.append(str(ipaddress.IPv4Address(base | rng.getrandbits(20))))
        else:
            out.append(str(ipaddress.IPv6Address(0x20010DB8 << 96 | rng.getrandbits(40) << 64 |
                                                 rng.getrandbits(64))))
    return out


def test_no_client_gets_another_clients_answer():
    rng = random.Random(7871)
    total_hits = 0
    for trial in range(2):
        lines = random_map(rng)
        m = Mapping(lines, "r0", TARGETS, [{"name": "www.cdn.example.", "regions": REGIONS}])
        for version, sources in ((4, (0, 16, 20, 24, 32)), (6, (0, 32, 48, 56, 64))):
            clients = _clients(rng, version, 100)
            for source in sources:
                res = Resolver(m, source, version, "198.18.0.1" if version == 4 else "2001:db8:ffff::1")
                for client in clients * 2:
                    for qtype in ("A", "AAAA"):
                        got = res.resolve(client, qtype)
                        assert got == res.direct(client, qtype), (trial, source, client, qtype)
                total_hits += res.hits
    # the caches were really used (answers were shared between clients)
    assert total_hits > 500
