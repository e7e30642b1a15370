"""Announce and withdraw the anycast service addresses through netlink.

This is the only module of pop53 that imports pyroute2.  pop53 never speaks BGP: it changes the
kernel state that the machine's BGP speaker (BIRD, see `pop53.anycast.bird`) watches, and BIRD turns that
into BGP UPDATEs towards the PoP router (paper §3.1, Figure 6: every machine runs a nameserver, a
BGP speaker and a monitoring agent).

Two conventional signals are supported (`mode`):

``address``
    The service address itself is configured on a service interface (a ``dummy`` link when the
    kernel has that link type, else ``lo``).  BIRD's ``direct`` protocol exports the prefix while
    the address exists.  Withdrawing removes the address, so queries still in flight towards this
    machine are lost until the router converges (like the paper's §4.1 withdraw experiment).

``route``
    The address stays configured; the signal is a route to the service prefix in a dedicated
    routing table (default 53) that BIRD's ``kernel`` protocol learns (``learn``).  Withdrawing
    deletes only that route, so queries already in flight are still answered while the routers
    converge.

Every operation is idempotent (announcing twice, or withdrawing what is not announced, is a no-op)
and transactional: without CAP_NET_ADMIN a `RouteError` is raised before anything is changed, and a
failure half way rolls back what this call already changed.
"""
from __future__ import annotations

import errno
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pop53.errors import RouteError

#: The dedicated kernel routing table for signal routes (BIRD: ``kernel table 53``).
SIGNAL_TABLE = 53
#: rtm_protocol of our signal routes.  RTPROT_STATIC (4): BIRD's ``learn`` ignores RTPROT_KERNEL
#: routes, and a fixed value lets us recognise our own routes.
SIGNAL_PROTO = 4
#: Name of the service interface we create when the kernel supports ``dummy`` links.
SERVICE_IFNAME = "pop53svc"
MODES = ("address", "route")

_CAP_NET_ADMIN = 12  # linux/capability.h
_RT_SCOPE_LINK = 253
_RT_SCOPE_NOWHERE = 255
_IFA_F_NODAD = 0x02
_RT_TABLE_MAIN = 254

Prefix = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def parse_service_address(text: str) -> Prefix:
    """``10.53.0.53`` / ``10.53.0.53/32`` / ``fd53::53`` -> an interface (address + prefix length)."""
    try:
        iface = ipaddress.ip_interface(text.strip())
    except ValueError as exc:
        raise RouteError(f"invalid service address {text!r}: {exc}") from None
    return iface


def has_net_admin() -> bool:
    """True if this process has CAP_NET_ADMIN in its effective set (read from /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _netlink_error(action: str, exc: NetlinkError) -> RouteError:
    code = exc.code
    if code in (errno.EPERM, errno.EACCES):
        return RouteError(f"{action}: permission denied (needs CAP_NET_ADMIN)")
    return RouteError(f"{action}: {os.strerror(code) if isinstance(code, int) else exc}")


@dataclass
class ServiceRoutes:
    """The service addresses of one machine and the signal that announces them.

    `netns` names a network namespace (``ip netns``) to act in instead of our own; the lab and the
    tests use it, a production agent runs inside the machine's namespace and leaves it None.
    """

    addresses: list[Prefix]
    mode: str = "route"
    interface: str | None = None  # None = auto: dummy "pop53svc" if available, else "lo"
    table: int = SIGNAL_TABLE
    netns: str | None = None
    _ifindex: int | None = field(default=None, init=False, repr=False)
    _ifname: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.addresses = [a if not isinstance(a, str) else parse_service_address(a)
                          for a in self.addresses]
        if not self.addresses:
            raise RouteError("no service addresses configured")
        if self.mode not in MODES:
            raise RouteError(f"unknown route signal mode {self.mode!r} (expected one of {MODES})")
        if not 1 <= int(self.table) < 2**32 or int(self.table) in (0, 253, 254, 255):
            raise RouteError(f"signal table {self.table} is reserved or out of range")

    # -- netlink plumbing -------------------------------------------------------------------
    def _open(self) -> IPRoute:
        if not has_net_admin():
            raise RouteError("route control needs CAP_NET_ADMIN (run the agent as root or grant "
                             "the capability); nothing was changed")
        try:
            return IPRoute(netns=self.netns) if self.netns else IPRoute()
        except (OSError, NetlinkError) as exc:
            raise RouteError(f"cannot open netlink socket (netns={self.netns}): {exc}") from None

    def _resolve_interface(self, ipr: IPRoute, create: bool) -> tuple[int, str]:
        if self._ifindex is not None:
            return self._ifindex, self._ifname  # type: ignore[return-value]
        if self.interface:
            idx = ipr.link_lookup(ifname=self.interface)
            if not idx:
                raise RouteError(f"service interface {self.interface!r} does not exist")
            name = self.interface
        else:
            idx = ipr.link_lookup(ifname=SERVICE_IFNAME)
            name = SERVICE_IFNAME
            if not idx and create:
                try:
                    ipr.link("add", ifname=SERVICE_IFNAME, kind="dummy")
                    idx = ipr.link_lookup(ifname=SERVICE_IFNAME)
                except NetlinkError as exc:
                    # This kernel has no dummy link type ("Unknown device type", EOPNOTSUPP):
                    # the loopback interface carries the address just as well.
                    if exc.code in (errno.EPERM, errno.EACCES):
                        raise _netlink_error("create service interface", exc) from None
                    idx = []
            if not idx:
                idx = ipr.link_lookup(ifname="lo")
                name = "lo"
        index = idx[0]
        try:
            ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            raise _netlink_error(f"bring {name} up", exc) from None
        self._ifindex, self._ifname = index, name
        return index, name

    @property
    def interface_name(self) -> str | None:
        return self._ifname

    # -- inspection ---------------------------------------------------------------------------
    def _present(self, ipr: IPRoute, index: int) -> tuple[set[str], set[str]]:
        addrs = set()
        for msg in ipr.addr("dump", index=index):
            addrs.add(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        routes = set()
        for family in (2, 10):
            for msg in ipr.route("dump", family=family, table=self.table):
                if msg.get_attr("RTA_TABLE") != self.table:
                    continue
                dst = msg.get_attr("RTA_DST")
                if dst is not None:
                    routes.add(f"{dst}/{msg['dst_len']}")
        return addrs, routes

    def state(self) -> dict[str, dict[str, bool]]:
        """Per service address: is the address configured, is the signal route present."""
        ipr = self._open()
        try:
            index, _ = self._resolve_interface(ipr, create=False)
            addrs, routes = self._present(ipr, index)
        finally:
            ipr.close()
        return {str(a): {"address": _addr_key(a) in addrs,
                         "route": str(a.network) in routes} for a in self.addresses}

    def announced(self) -> bool:
        """True if every service address is announced under the configured mode."""
        st = self.state()
        if self.mode == "address":
            return all(v["address"] for v in st.values())
        return all(v["address"] and v["route"] for v in st.values())

    # -- changes ------------------------------------------------------------------------------
    def announce(self) -> list[str]:
        """Make every service address announced.  Returns the changes made (empty: already so)."""
        want_route = self.mode == "route"
        return self._apply(add_addr=True, add_route=want_route, del_route=False, del_addr=False)

    def withdraw(self) -> list[str]:
        """Stop announcing.  In ``route`` mode the address stays so in-flight queries are answered."""
        if self.mode == "route":
            return self._apply(add_addr=False, add_route=False, del_route=True, del_addr=False)
        return self._apply(add_addr=False, add_route=False, del_route=True, del_addr=True)

    def remove(self) -> list[str]:
        """Remove the signal routes and the addresses (teardown)."""
        return self._apply(add_addr=False, add_route=False, del_route=True, del_addr=True)

    def _apply(self, *, add_addr: bool, add_route: bool, del_route: bool,
               del_addr: bool) -> list[str]:
        ipr = self._open()
        done: list[tuple[str, Prefix]] = []
        try:
            index, name = self._resolve_interface(ipr, create=add_addr)
            addrs, routes = self._present(ipr, index)
            try:
                for a in self.addresses:
                    if add_addr and _addr_key(a) not in addrs:
                        self._addr(ipr, "add", index, a)
                        done.append(("addr-add", a))
                    if add_route and str(a.network) not in routes:
                        self._route(ipr, "add", index, a)
                        done.append(("route-add", a))
                    if del_route and str(a.network) in routes:
                        self._route(ipr, "del", index, a)
                        done.append(("route-del", a))
                    if del_addr and _addr_key(a) in addrs:
                        self._addr(ipr, "del", index, a)
                        done.append(("addr-del", a))
            except RouteError:
                self._rollback(ipr, index, done)
                raise
        finally:
            ipr.close()
        return [f"{op} {a} dev {name}" + (f" table {self.table}" if "route" in op else "")
                for op, a in done]

    def _addr(self, ipr: IPRoute, op: str, index: int, a: Prefix) -> None:
        kw = {}
        if op == "add" and a.version == 6:
            # IFA_F_NODAD: on a dummy interface DAD would leave the address "tentative" for a
            # second or more, and the server could not bind it (RFC 4862 §5.4 is for links).
            kw["flags"] = _IFA_F_NODAD
        try:
            ipr.addr(op, index=index, address=str(a.ip), prefixlen=a.network.prefixlen, **kw)
        except NetlinkError as exc:
            if op == "add" and exc.code == errno.EEXIST:
                return
            if op == "del" and exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                return
            raise _netlink_error(f"{op} address {a}", exc) from None

    def _route(self, ipr: IPRoute, op: str, index: int, a: Prefix) -> None:
        kw = dict(dst=str(a.network), table=self.table, proto=SIGNAL_PROTO)
        if op == "add":
            kw["oif"] = index
            if a.version == 4:
                kw["scope"] = _RT_SCOPE_LINK
        elif a.version == 4:
            # IPv4 deletes match the scope exactly unless it is RT_SCOPE_NOWHERE ("any"), which
            # is what `ip route del` sends; without it the kernel answers ESRCH.
            kw["scope"] = _RT_SCOPE_NOWHERE
        try:
            ipr.route(op, **kw)
        except NetlinkError as exc:
            if op == "add" and exc.code == errno.EEXIST:
                return
            if op == "del" and exc.code in (errno.ESRCH, errno.ENOENT):
                return
            raise _netlink_error(f"{op} signal route {a.network} table {self.table}", exc) from None

    def _rollback(self, ipr: IPRoute, index: int, done: list[tuple[str, Prefix]]) -> None:
        undo = {"addr-add": ("addr", "del"), "addr-del": ("addr", "add"),
                "route-add": ("route", "del"), "route-del": ("route", "add")}
        for op, a in reversed(done):
            kind, inverse = undo[op]
            try:
                (self._addr if kind == "addr" else self._route)(ipr, inverse, index, a)
            except RouteError:
                pass  # best effort; the original error is what the caller needs to see


def _addr_key(a: Prefix) -> str:
    return f"{a.ip}/{a.network.prefixlen}"


def fib_nexthops(prefix: str, *, netns: str | None = None,
                 table: int = _RT_TABLE_MAIN) -> list[str]:
    """Gateways of the FIB route for exactly `prefix` (ECMP: several), sorted; [] if none.

    Used to check what the PoP router actually forwards with, not what BIRD believes.
    """
    net = ipaddress.ip_network(prefix, strict=False)
    family = 2 if net.version == 4 else 10
    try:
        ipr = IPRoute(netns=netns) if netns else IPRoute()
    except (OSError, NetlinkError) as exc:
        raise RouteError(f"cannot open netlink socket (netns={netns}): {exc}") from None
    try:
        out: list[str] = []
        for msg in ipr.route("dump", family=family, table=table):
            if msg.get_attr("RTA_TABLE") != table:
                continue
            dst = msg.get_attr("RTA_DST")
            if dst is None or msg["dst_len"] != net.prefixlen or \
                    ipaddress.ip_address(dst) != net.network_address:
                continue
            gw = msg.get_attr("RTA_GATEWAY")
            if gw:
                out.append(gw)
            for hop in msg.get_attr("RTA_MULTIPATH") or []:
                g = hop.get_attr("RTA_GATEWAY")
                if g:
                    out.append(g)
        return sorted(set(out), key=lambda s: ipaddress.ip_address(s))
    finally:
        ipr.close()


def iter_addresses(texts: Iterable[str]) -> list[Prefix]:
    return [parse_service_address(t) for t in texts]
