"""One lab machine (a namespace running a DNS server, BIRD and the agent) and the configs the
lab writes for it: its BIRD node config and its agent TOML."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pop53.anycast import bird as birdmod
from pop53.lab.process import DNS_PORT, ETCD_PORT, LAB_ZONE, MACHINE_AS, ROUTER_AS, SERVICE4, \
    SERVICE6, Proc


@dataclass
class Machine:
    index: int
    ns: str
    link4: str
    link6: str
    router4: str
    router6: str
    workdir: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    bird: birdmod.BirdProcess | None = None

    @property
    def name(self) -> str:
        return f"m{self.index}"


def services(cfg) -> list[str]:
    """The anycast prefixes every machine announces: the lab's service and `cfg.services` (the
    further clouds a PoP may advertise)."""
    return [SERVICE4, SERVICE6, *cfg.services]


def node_config(cfg, m: Machine) -> birdmod.NodeConfig:
    """The machine's BIRD: eBGP to the router over both families, announcing the service."""
    return birdmod.NodeConfig(
        router_id=m.link4, local_as=MACHINE_AS,
        neighbors=[birdmod.Neighbor(m.link4, m.router4, ROUTER_AS, "up_v4"),
                   birdmod.Neighbor(m.link6, m.router6, ROUTER_AS, "up_v6")],
        service=services(cfg), signal=cfg.signal, interface="lo",
        role="input-delayed" if m.index in cfg.input_delayed else "normal",
        hold_time=cfg.hold_time, keepalive_time=cfg.keepalive_time, bfd=cfg.bfd)


def agent_config(cfg, m: Machine, state: Path) -> str:
    """The machine's agent TOML (`pop53 agent run --config`): probes its own server, moves the
    service routes, and takes suspension slots from the router's etcd when `cfg.etcd`."""
    lines = [
        f'name = "{m.name}"',
        f"interval = {cfg.agent_interval}",
        "timeout = 0.5",
        "slow_ms = 400",
        f"fail_after = {cfg.fail_after}",
        f"pass_after = {cfg.pass_after}",
        f'state_dir = "{state}"',
        f"never_suspend = {'true' if m.index in cfg.never_suspend else 'false'}",
        f'server = "127.0.0.1:{DNS_PORT}"',
        f'zones = ["{LAB_ZONE}"]',
        "tcp = true",
        "",
        "[routes]",
        "addresses = [" + ", ".join(f'"{p}"' for p in services(cfg)) + "]",
        f'mode = "{cfg.signal}"',
        'interface = "lo"',
        *([f'plan = "{cfg.plan}"', f'pop = "{cfg.pop}"'] if cfg.plan else []),
        "",
        "[[cases]]",
        f'qname = "www.{LAB_ZONE}"',
        'qtype = "A"',
        'expect = ["10.53.200.1"]',
    ]
    if cfg.etcd:
        lines += ["", "[etcd]", f'endpoints = ["http://{m.router4}:{ETCD_PORT}"]',
                  'prefix = "/pop53/lab"', f"slots = {cfg.slots}",
                  f"lease_ttl = {cfg.lease_ttl}"]
    if cfg.max_zone_age > 0:
        lines += ["", "[staleness]", 'source = "file-mtime"',
                  f'files = {{ "{LAB_ZONE}" = "{m.workdir / "zone-stamp"}" }}',
                  f"max_age = {cfg.max_zone_age}"]
    return "\n".join(lines) + "\n"
