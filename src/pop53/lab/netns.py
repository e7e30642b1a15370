"""The lab's network namespaces and veth links: created through ``ip``, remembered in order,
deleted in reverse by `Namespaces.delete_all` (the lab's teardown always calls it)."""
from __future__ import annotations

import subprocess

from pop53.lab.process import run_command


class Namespaces:
    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, name: str) -> str:
        run_command(["ip", "netns", "add", name])
        self.names.append(name)
        run_command(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def sysctl(self, ns: str, *kv: str) -> None:
        run_command(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *kv])

    def link(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        run_command(["ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name",
                     name_b, "netns", ns_b])
        run_command(["ip", "-n", ns_a, "link", "set", name_a, "up"])
        run_command(["ip", "-n", ns_b, "link", "set", name_b, "up"])

    def addr(self, ns: str, dev: str, cidr: str) -> None:
        # No duplicate address detection on IPv6: the address is usable at once.
        extra = ["nodad"] if ":" in cidr else []
        run_command(["ip", "-n", ns, "addr", "add", cidr, "dev", dev, *extra])

    def attach(self, router: str, name: str, ns: str, net4: str, net6: str) -> None:
        """Link `ns` to the router as interface `name`: the router is .1 / ::1 of the /24 and
        /64, `ns` is .2 / ::2 with its default routes via the router."""
        self.link(router, name, ns, "up0")
        self.addr(router, name, f"{net4}.1/24")
        self.addr(router, name, f"{net6}::1/64")
        self.addr(ns, "up0", f"{net4}.2/24")
        self.addr(ns, "up0", f"{net6}::2/64")
        run_command(["ip", "-n", ns, "route", "add", "default", "via", f"{net4}.1"])
        run_command(["ip", "-n", ns, "-6", "route", "add", "default", "via", f"{net6}::1"])

    def delete_all(self) -> None:
        for ns in reversed(self.names):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.names.clear()
