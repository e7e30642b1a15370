"""Flows for the ECMP emulator (pop53.ecmp.model): the fields a router hashes, as numpy arrays
(millions at once), and random flows to draw from."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from pop53.errors import Pop53Error


class EcmpError(Pop53Error):
    """Bad input to the ECMP emulator (unknown policy, empty next-hop set, bad address)."""


# net.ipv4.fib_multipath_hash_fields bits (include/net/ip_fib.h, "This is user API").
FIELD_SRC_IP = 1 << 0
FIELD_DST_IP = 1 << 1
FIELD_IP_PROTO = 1 << 2
FIELD_FLOWLABEL = 1 << 3
FIELD_SRC_PORT = 1 << 4
FIELD_DST_PORT = 1 << 5
FIELD_OUTER_MASK = 0x3F
DEFAULT_FIELDS = FIELD_SRC_IP | FIELD_DST_IP | FIELD_IP_PROTO  # kernel default 0x0007

IPPROTO_UDP = 17


@dataclass
class Flows:
    """A batch of flows as parallel arrays (one family per batch).

    ``src``/``dst`` are ``(n, 4)`` or ``(n, 16)`` uint8 arrays of addresses in network byte
    order; ``sport``/``dport`` uint16 port numbers; ``proto`` uint8 IP protocol numbers;
    ``flowlabel`` the IPv6 flow label (20 bits; 0 for IPv4).
    """

    family: int
    src: np.ndarray
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    proto: np.ndarray
    flowlabel: np.ndarray

    def __post_init__(self) -> None:
        if self.family not in (4, 6):
            raise EcmpError(f"address family must be 4 or 6, not {self.family!r}")
        width = 4 if self.family == 4 else 16
        n = len(self.sport)
        for name in ("src", "dst"):
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.uint8)
            if arr.ndim == 1 and n == 1 and arr.shape[0] == width:
                arr = arr.reshape(1, width)
            if arr.shape != (n, width):
                raise EcmpError(f"{name} addresses must have shape ({n}, {width}), "
                                f"got {arr.shape}")
            setattr(self, name, arr)
        for name, dtype in (("sport", np.uint16), ("dport", np.uint16), ("proto", np.uint8),
                            ("flowlabel", np.uint32)):
            arr = np.asarray(getattr(self, name))
            if arr.ndim == 0:
                arr = np.full(n, arr)
            if arr.shape != (n,):
                raise EcmpError(f"{name} must have {n} entries, got shape {arr.shape}")
            if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(dtype).max):
                raise EcmpError(f"{name} out of range for {np.dtype(dtype).name}")
            setattr(self, name, arr.astype(dtype))
        if self.family == 4 and self.flowlabel.any():
            raise EcmpError("IPv4 flows have no flow label")
        if self.flowlabel.size and self.flowlabel.max() > 0xFFFFF:
            raise EcmpError("an IPv6 flow label has 20 bits")

    def __len__(self) -> int:
        return len(self.sport)

    @classmethod
    def from_tuples(cls, tuples: Iterable[tuple], *, proto: int = IPPROTO_UDP) -> "Flows":
        """Flows from ``(src_ip, src_port, dst_ip, dst_port)`` or with a 5th flow label."""
        rows = list(tuples)
        if not rows:
            raise EcmpError("no flows given")
        fam = ipaddress.ip_address(rows[0][0]).version
        src, dst, sport, dport, label = [], [], [], [], []
        for i, row in enumerate(rows):
            if len(row) not in (4, 5):
                raise EcmpError(f"flow {i}: expected (src, sport, dst, dport[, flowlabel])")
            s, d = ipaddress.ip_address(row[0]), ipaddress.ip_address(row[2])
            if s.version != fam or d.version != fam:
                raise EcmpError(f"flow {i}: mixed address families in one batch")
            src.append(s.packed)
            dst.append(d.packed)
            sport.append(int(row[1]))
            dport.append(int(row[3]))
            label.append(int(row[4]) if len(row) == 5 else 0)
        width = 4 if fam == 4 else 16
        return cls(fam,
                   np.frombuffer(b"".join(src), np.uint8).reshape(-1, width),
                   np.frombuffer(b"".join(dst), np.uint8).reshape(-1, width),
                   np.array(sport), np.array(dport), np.full(len(rows), proto),
                   np.array(label))

    def addresses(self, which: str = "src") -> list[str]:
        """The addresses as strings (for building commands and packets)."""
        arr = self.src if which == "src" else self.dst
        cls = ipaddress.IPv4Address if self.family == 4 else ipaddress.IPv6Address
        return [str(cls(bytes(row))) for row in arr]

    def subset(self, index) -> "Flows":
        return Flows(self.family, self.src[index], self.dst[index], self.sport[index],
                     self.dport[index], self.proto[index], self.flowlabel[index])


def _network_bytes(net: str, family: int) -> tuple[int, int]:
    network = ipaddress.ip_network(net, strict=False)
    if network.version != family:
        raise EcmpError(f"{net} is not an IPv{family} network")
    return int(network.network_address), network.num_addresses


def _int_to_bytes(values: Sequence[int] | np.ndarray, width: int) -> np.ndarray:
    """Big-endian byte rows from (possibly >64-bit) integers."""
    if width == 4:
        return np.asarray(values, dtype=">u4").view(np.uint8).reshape(-1, 4)
    return np.frombuffer(b"".join(int(v).to_bytes(16, "big") for v in values),
                         np.uint8).reshape(-1, 16)


def random_flows(n: int, *, family: int = 4, src_net: str | None = None,
                 dst: str | Sequence[str] | None = None, dport: int | None = 53,
                 sport: int | None = None, proto: int = IPPROTO_UDP,
                 rng: np.random.Generator | int | None = None,
                 sport_range: tuple[int, int] = (1024, 65535)) -> Flows:
    """``n`` random UDP flows: random source address in ``src_net``, random source port
    (unless ``sport`` fixes it), destination(s) ``dst``, destination port ``dport``."""
    if n <= 0:
        raise EcmpError("the number of flows must be positive")
    rng = np.random.default_rng(rng)
    if src_net is None:
        src_net = "10.53.128.0/17" if family == 4 else "fd53:c8::/64"
    if dst is None:
        dst = "10.53.100.1" if family == 4 else "fd53:100::1"
    base, size = _network_bytes(src_net, family)
    if family == 4:
        offs = rng.integers(1, max(size - 1, 2), size=n, dtype=np.int64)
        src = _int_to_bytes((base + offs).astype(np.uint32), 4)
    else:
        span = min(size - 1, 2**62)
        offs = rng.integers(1, span, size=n, dtype=np.int64)
        src = _int_to_bytes([base + int(o) for o in offs], 16)
    dsts = [dst] if isinstance(dst, str) else list(dst)
    dpack = np.stack([np.frombuffer(ipaddress.ip_address(d).packed, np.uint8) for d in dsts])
    if dpack.shape[1] != (4 if family == 4 else 16):
        raise EcmpError(f"destination family does not match IPv{family}")
    dst_arr = dpack[rng.integers(0, len(dsts), size=n)]
    sports = (np.full(n, sport) if sport is not None else
              rng.integers(sport_range[0], sport_range[1] + 1, size=n))
    dports = (np.full(n, dport) if dport is not None else
              rng.integers(1024, 65536, size=n))
    return Flows(family, src, dst_arr, sports, dports, np.full(n, proto), np.zeros(n))


