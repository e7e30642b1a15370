"""Checks of a cloud plan against what is deployed: allocations, the apex NS of every hosted
zone, the shared zones, and the clouds each PoP advertises.  Each problem is one line naming
the file, zone or PoP; an empty list means everything holds."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.name
import dns.rdatatype

from pop53.anycast.bird import service_prefixes
from pop53.clouds.plan import Plan, Pop
from pop53.zone.zonefile import ZoneData


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _names(ns) -> str:
    return ", ".join(sorted(n.to_text() for n in ns))


def check_allocations(plan: Plan, state: dict) -> list[Problem]:
    out = [Problem(f"enterprise {e.name}", "has no delegation set (run `pop53 clouds allocate`)")
           for e in plan.enterprises if e.name not in state]
    known = {e.name for e in plan.enterprises}
    out += [Problem(f"enterprise {n}", "has a delegation set but is not in the plan")
            for n in state if n not in known]
    return out


def apex_ns(data: ZoneData) -> set[dns.name.Name]:
    rds = data.zone.get_rdataset(data.origin, dns.rdatatype.NS)
    return {r.target for r in rds} if rds else set()


def check_zones(plan: Plan, state: dict, zones: list[ZoneData]) -> list[Problem]:
    """Every enterprise zone's apex NS set is exactly its delegation set's nameservers; every
    shared zone is delegated to `shared_size` distinct clouds and nothing else."""
    owner = {z: e.name for e in plan.enterprises for z in e.zones}
    by_ns = plan.cloud_of_ns()
    out: list[Problem] = []
    for data in zones:
        where = f"{data.source}: zone {data.origin}"
        ns = apex_ns(data)
        if data.origin in owner:
            name = owner[data.origin]
            if name not in state:
                out.append(Problem(where, f"enterprise {name!r} has no delegation set"))
                continue
            want = plan.ns_of(state[name])
            if ns != want:
                msg = [f"apex NS must be the {len(want)} nameservers of {name!r}'s delegation set"]
                if want - ns:
                    msg.append(f"missing {_names(want - ns)}")
                if ns - want:
                    msg.append(f"not in the set {_names(ns - want)}")
                out.append(Problem(where, "; ".join(msg)))
        elif data.origin in plan.shared:
            clouds = {by_ns[n] for n in ns if n in by_ns}
            other = {n for n in ns if n not in by_ns}
            if other:
                out.append(Problem(where, f"shared zone delegated to nameservers of no cloud: "
                                          f"{_names(other)}"))
            if len(clouds) != plan.shared_size:
                out.append(Problem(where, f"shared zone delegated to {len(clouds)} clouds, "
                                          f"the plan says {plan.shared_size}"))
    return out


def pop_clouds(plan: Plan, pop: Pop) -> tuple[set[int], list[Problem]]:
    """The clouds a PoP advertises, from its cloud names, its prefixes and its machines' BIRD
    configs; prefixes that belong to no cloud are problems (an unplanned announcement)."""
    where = f"pop {pop.name}"
    clouds = {plan.index(c) for c in pop.clouds}
    problems: list[Problem] = []
    prefixes = [(p, where) for p in pop.prefixes]
    for path in pop.bird:
        try:
            with open(path, encoding="utf-8") as f:
                prefixes += [(p, f"{where}: {path}") for p in service_prefixes(f.read())]
        except OSError as exc:
            problems.append(Problem(f"{where}: {path}", f"cannot read: {exc.strerror}"))
    for text, w in prefixes:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            problems.append(Problem(w, f"invalid prefix {text!r}"))
            continue
        hit = [i for i, c in enumerate(plan.clouds)
               for cn in c.prefixes if cn.version == net.version and net.subnet_of(cn)]
        if hit:
            clouds.add(hit[0])
        else:
            problems.append(Problem(w, f"announces {net}, which belongs to no cloud"))
    return clouds, problems


def pop_problems(plan: Plan, pop: Pop) -> list[Problem]:
    """One PoP: unplanned prefixes, and more than `max_per_pop` clouds."""
    clouds, out = pop_clouds(plan, pop)
    if len(clouds) > plan.max_per_pop:
        names = ", ".join(plan.clouds[i].name for i in sorted(clouds))
        out.append(Problem(f"pop {pop.name}", f"advertises {len(clouds)} clouds ({names}); "
                                              f"at most {plan.max_per_pop} per PoP"))
    return out


def check_pops(plan: Plan) -> list[Problem]:
    """No PoP advertises more than `max_per_pop` clouds (a volumetric attack on one cloud that
    saturates a PoP then hurts at most one other)."""
    return [p for pop in plan.pops for p in pop_problems(plan, pop)]


def check_machine(plan: Plan, pop_name: str, prefixes: list[str]) -> list[Problem]:
    """A machine about to announce `prefixes` in PoP `pop_name` (the agent's routes, the lab's
    BIRD configs): what the plan already places in that PoP plus these prefixes must stay within
    `max_per_pop` clouds, and every prefix must belong to a cloud."""
    mine = next((p for p in plan.pops if p.name == pop_name), None)
    if mine is None:
        return [Problem(f"pop {pop_name}", f"is not in the cloud plan {plan.file}")]
    return pop_problems(plan, Pop(mine.name, mine.clouds, mine.prefixes + tuple(prefixes),
                                  mine.bird))

