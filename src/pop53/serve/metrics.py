"""Prometheus metrics: a collector that sums the C counters of every worker on scrape."""
from __future__ import annotations

import time

import dns.rcode
import dns.rdatatype
import prometheus_client
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pop53.serve import observe


def _rcode_name(i: int) -> str:
    try:
        return dns.rcode.to_text(i)
    except Exception:
        return str(i)


def _type_name(i: int) -> str:
    if i == 256:
        return "other"
    try:
        return dns.rdatatype.to_text(i)
    except Exception:
        return f"TYPE{i}"


class ServerCollector:
    def __init__(self, server):
        self.server = server

    def collect(self):
        s = self.server
        workers = [(w.index, w.stats()) for w in s.workers]
        tcp = s.tcp.counters.stats() if s.tcp is not None else None
        total: dict = {}
        rcodes: dict = {}
        qtypes: dict = {}
        mapped: dict = {}
        for st in [w for _, w in workers] + ([tcp] if tcp else []):
            for k, v in st.items():
                if isinstance(v, int):
                    total[k] = total.get(k, 0) + v
            for k, v in st["rcode"].items():
                rcodes[k] = rcodes.get(k, 0) + v
            for k, v in st["qtype"].items():
                qtypes[k] = qtypes.get(k, 0) + v
            for k, v in st.get("mapped", {}).items():
                mapped[k] = mapped.get(k, 0) + v
        q = CounterMetricFamily("pop53_queries", "Queries received, by transport", labels=["proto"])
        q.add_metric(["udp"], total.get("udp", 0))
        q.add_metric(["tcp"], total.get("tcp", 0))
        yield q
        r = CounterMetricFamily("pop53_responses", "Responses sent, by rcode", labels=["rcode"])
        for k, v in sorted(rcodes.items()):
            r.add_metric([_rcode_name(k)], v)
        yield r
        t = CounterMetricFamily("pop53_queries_by_type", "Queries by question type", labels=["qtype"])
        for k, v in sorted(qtypes.items()):
            t.add_metric([_type_name(k)], v)
        yield t
        mp = CounterMetricFamily("pop53_mapped_replies", "Replies with a mapped answer, by what "
                                 "picked it: ecs (a trusted ECS option), source (the query's "
                                 "address), ecs_untrusted (ECS from a resolver not in ecs_trust: "
                                 "the source picked), default (no client address: the map's "
                                 "default region)", labels=["key"])
        for k in ("ecs", "source", "ecs_untrusted", "default"):
            mp.add_metric([k], mapped.get(k, 0))
        yield mp
        for name, key, doc in (
            ("pop53_dropped", "dropped", "Queries dropped without a reply (malformed, QR=1, oversized)"),
            ("pop53_truncated", "truncated", "Responses sent with TC=1"),
            ("pop53_control_messages", "control", "Messages handed to the control plane (NOTIFY, XFR, TSIG)"),
            ("pop53_received_bytes", "bytes_in", "Bytes of queries received"),
            ("pop53_sent_bytes", "bytes_out", "Bytes of responses produced"),
            ("pop53_send_errors", "send_errors", "Replies the kernel refused to send"),
            ("pop53_rrl_dropped", "rrl_dropped", "UDP responses dropped by response rate limiting"),
            ("pop53_rrl_slipped", "rrl_slipped", "UDP responses sent truncated (TC=1) by response rate limiting"),
            ("pop53_cookies_valid", "cookies_valid", "Queries with a valid server cookie of ours (RFC 7873)"),
            ("pop53_cookies_new", "cookies_new", "Queries with a client cookie only, or a server cookie not ours"),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], total.get(key, 0))
            yield c
        wq = CounterMetricFamily("pop53_worker_queries", "Queries per UDP worker", labels=["worker"])
        wb = CounterMetricFamily("pop53_worker_batches", "recvmmsg batches per UDP worker", labels=["worker"])
        for idx, st in workers:
            wq.add_metric([str(idx)], st["queries"])
            wb.add_metric([str(idx)], st["batches"])
        yield wq
        yield wb
        if tcp:
            yield from _tcp_metrics(tcp)
        g = GaugeMetricFamily("pop53_image_generation", "Generation of the published image")
        g.add_metric([], s.shared.generation)
        yield g
        b = GaugeMetricFamily("pop53_image_bytes", "Size of the published image")
        b.add_metric([], len(s.current_image) if s.current_image is not None else 0)
        yield b
        if s.scoring is not None:
            from pop53.scoring import metrics as scoring_metrics
            yield from scoring_metrics.families(s.workers, s.scoring.scorer)
        rf = CounterMetricFamily("pop53_reload_failures", "Reloads rejected (the old data kept serving)")
        rf.add_metric([], s.reload_failures)
        yield rf
        serial = GaugeMetricFamily("pop53_zone_serial", "SOA serial served, by zone", labels=["zone"])
        age = GaugeMetricFamily("pop53_zone_age_seconds", "Seconds since the zone's data was last "
                                "loaded or confirmed current", labels=["zone"])
        now = time.time()
        for zone, ser in sorted(s.zone_serials.items()):
            serial.add_metric([zone], ser)
            age.add_metric([zone], now - s.zone_fresh.get(zone, now))
        yield serial
        yield age
        if getattr(s, "observe", None) is not None:
            yield from s.observe.families()     # per zone, latency, dnstap (serve/observe.py)
        yield observe.build_info()


def _tcp_metrics(tcp: dict):
    """The TCP loops' connection slots (docs/tcp.md)."""
    g = GaugeMetricFamily("pop53_tcp_connections", "TCP connections open in the data plane")
    g.add_metric([], tcp.get("tcp_connections", 0))
    yield g
    c = CounterMetricFamily("pop53_tcp_closed", "TCP connections refused or closed by a limit",
                            labels=["reason"])
    for reason, key in (("refused", "tcp_refused"), ("refused_per_ip", "tcp_refused_per_ip"),
                        ("evicted", "tcp_evicted"), ("incomplete_timeout", "tcp_timed_out"),
                        ("write_timeout", "tcp_stalled"), ("control_refused", "tcp_control_refused")):
        c.add_metric([reason], tcp.get(key, 0))
    yield c


class _DefaultRegistry:
    def collect(self):
        yield from prometheus_client.REGISTRY.collect()


def start(server, listen) -> CollectorRegistry:
    """Serve the metrics of one server at listen (host, port); returns the registry."""
    registry = CollectorRegistry()
    registry.register(ServerCollector(server))
    # what the rest of the process counts on prometheus_client's default registry: the xfr
    # engine's pop53_xfr_* (updates applied and rejected, refusals, staleness, ...) and the
    # Python process's own (CPU, memory, garbage collector)
    registry.register(_DefaultRegistry())
    httpd, thread = start_http_server(listen.port, addr=listen.host, registry=registry)
    server._metrics_httpd = httpd
    return registry
