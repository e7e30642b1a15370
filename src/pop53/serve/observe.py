"""Wiring of the data plane's observability into a server (issue 14 points 11 and 12): per-zone
counters and dnstap attached to every reader before it runs, the zone slot table written into
each image before it is published, and the Prometheus families of both plus latency and build
info.  serve/server.py calls attach(), label() and stop(); serve/metrics.py calls families()."""
from __future__ import annotations

import ctypes
import platform

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from pop53 import __version__, _core
from pop53.serve import dnstap


class Observe:
    def __init__(self, server):
        self.server = server
        self.zones = _core.ZoneStats()
        cfg = server.config
        settings = dnstap.parse(cfg.doc, cfg.source, cfg.identity)
        self.dnstap = dnstap.Output(settings) if settings is not None else None
        self.readers: list = []

    def attach(self) -> None:
        """Every reader counts per zone and (with [dnstap]) logs through its own ring."""
        s = self.server
        self.readers = s.workers + s.tcp.loops + [s.tcp.counters.handed]
        for r in self.readers:
            self.zones.attach(r)
        if s.current_image is not None:
            self.label(s.current_image)
        if self.dnstap is not None:
            socks = s.net.udp_socks
            for i, w in enumerate(s.workers):
                # an XDP worker writes the address asked from each frame; the ring's own
                # address (the first listen socket) is only its default
                sock = socks[i] if i < len(socks) else socks[0]
                self.dnstap.attach(w, False, sock.getsockname())
            for lp in s.tcp.loops:
                self.dnstap.attach(lp, True, s.net.tcp_socks[0].getsockname() if s.net.tcp_socks else None)
            self.dnstap.start()

    def reconfigure_dnstap(self, cfg) -> list[str]:
        """A reload's (validated) config: apply a changed [dnstap]; returns what needs a
        restart (dnstap on a server started without it, dnstap.ring_size)."""
        settings = dnstap.parse(cfg.doc, cfg.source, cfg.identity)
        if self.dnstap is None:
            return ["dnstap"] if settings is not None else []
        if settings == self.dnstap.settings:
            return []
        return self.dnstap.reconfigure(settings)

    def label(self, image) -> None:
        """Before `image` is published: its zone index -> counter slot table."""
        self.zones.label(image.view, image.zone_names())

    def stop(self) -> None:
        if self.dnstap is not None:
            self.dnstap.stop()

    # -- metrics ---------------------------------------------------------------------------
    def families(self):
        rc = CounterMetricFamily("pop53_zone_responses", "Responses per zone, by rcode",
                                 labels=["zone", "rcode"])
        qt = CounterMetricFamily("pop53_zone_queries", "Answered queries per zone, by query type "
                                 "(common types, else other)", labels=["zone", "qtype"])
        for zone, rcodes, types in self.zones.snapshot():
            for name, v in zip(_core.ZS_RCODE_NAMES, rcodes):
                if v:
                    rc.add_metric([zone, name], v)
            for name, v in zip(_core.ZS_TYPE_NAMES, types):
                if v:
                    qt.add_metric([zone, name], v)
        yield rc
        yield qt
        h = HistogramMetricFamily(
            "pop53_answer_latency_seconds", "Time from a batch's receive to its replies' send, "
            "counted once per reply (UDP: per recvmmsg batch; TCP: per epoll batch)",
            labels=["proto"])
        s = self.server
        for proto, readers in (("udp", s.workers), ("tcp", s.tcp.loops if s.tcp else [])):
            h.add_metric([proto], *_buckets(*_core.latency(readers)))
        yield h
        h = HistogramMetricFamily(
            "pop53_answer_latency_total_seconds", "Time from each query's kernel receive "
            "timestamp (SO_TIMESTAMPNS) to its batch's send: the socket's receive queue plus the "
            "server (UDP socket workers); a sample: the queries read during one second in "
            "pop53_answer_latency_total_sample_every (with [scoring]: the newest query of each full "
            "batch on the normal sockets, every query on the priority sockets)", labels=["proto"])
        h.add_metric(["udp"], *_buckets(*_core.latency_from_kernel(s.workers)))
        yield h
        g = GaugeMetricFamily(
            "pop53_answer_latency_total_sample_every", "pop53_answer_latency_total_seconds counts "
            "the UDP queries read during one second in this many ([server] "
            "receive_timestamp_every; 1: every query)", labels=["proto"])
        g.add_metric(["udp"], max((w.stamp_every for w in s.workers), default=1))
        yield g
        yield from xdp_families(s)
        if self.dnstap is not None:
            st = self.dnstap.stats()
            for key, doc in (("sampled", "Queries sampled for dnstap"),
                             ("dropped", "Sampled messages dropped: a worker's ring was full"),
                             ("frames", "dnstap frames written"),
                             ("lost", "dnstap frames encoded but lost when the output failed"),
                             ("opens", "Times the dnstap output was opened or reconnected")):
                c = CounterMetricFamily(f"pop53_dnstap_{key}", doc)
                c.add_metric([], st.get(key, 0))
                yield c
            g = GaugeMetricFamily("pop53_dnstap_connected", "1 while the dnstap output is open")
            g.add_metric([], st["connected"])
            yield g


def _buckets(counts, total_ns):
    """A latency array (_core.latency) as cumulative Prometheus buckets and the sum in s."""
    buckets, acc = [], 0
    for bound, n in zip(_core.LATENCY_BOUNDS_NS, counts):
        acc += n
        buckets.append((repr(bound / 1e9), acc))
    buckets.append(("+Inf", acc + counts[-1]))
    return buckets, total_ns / 1e9


# struct xdp_statistics (linux/if_xdp.h), in order; older kernels give the first three
XDP_STATS = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
             "rx_fill_ring_empty_descs", "tx_ring_empty_descs")
SOL_XDP, XDP_STATISTICS = 283, 7
_libc = None


def xsk_statistics(fd: int) -> dict[str, int]:
    """An AF_XDP socket's XDP_STATISTICS counters (getsockopt; Python's socket module cannot
    wrap an AF_XDP descriptor).  {} when the kernel does not answer."""
    global _libc
    if fd < 0:
        return {}
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = (ctypes.c_uint64 * len(XDP_STATS))()
    size = ctypes.c_uint32(ctypes.sizeof(buf))
    if _libc.getsockopt(fd, SOL_XDP, XDP_STATISTICS, buf, ctypes.byref(size)) != 0:
        return {}
    return {name: buf[i] for i, name in enumerate(XDP_STATS) if (i + 1) * 8 <= size.value}


def xdp_families(server):
    """pop53_xdp_kernel_drops_total{queue, reason}: what the kernel dropped or could not hand to
    an AF_XDP socket (the overload controller reads rx_dropped + rx_ring_full; docs/xdp.md)."""
    xdp = getattr(server, "xdp", None)
    if xdp is None or not getattr(xdp, "workers", None):
        return
    c = CounterMetricFamily("pop53_xdp_kernel_drops", "AF_XDP socket counters "
                            "(XDP_STATISTICS): frames dropped or descriptors refused, by reason",
                            labels=["worker", "queue", "reason"])
    for w in xdp.workers:
        for reason, v in xsk_statistics(w.xsk_fd).items():
            c.add_metric([str(w.index), str(w.queue), reason], v)
    yield c


def build_info():
    """pop53_build_info: version, Cython, Python, features, as labels of a constant 1."""
    b = _core.BUILD
    g = GaugeMetricFamily("pop53_build_info", "pop53's build", labels=[
        "version", "cython", "python", "features", "debug"])
    g.add_metric([__version__, b["cython"], platform.python_version(), ",".join(b["features"]),
                  str(b["debug"]).lower()], 1)
    return g
