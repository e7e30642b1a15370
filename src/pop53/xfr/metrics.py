"""Counters of the transfer engine: a plain Counter for tests and status, mirrored into
Prometheus (the server's /metrics) when prometheus-client is importable."""
from __future__ import annotations

import collections
import logging
from typing import Any

log = logging.getLogger("pop53.xfr")

try:
    import prometheus_client as _prom
except ImportError:  # pragma: no cover - prometheus-client is a pinned dependency
    _prom = None

_metrics: dict[str, Any] = {}


def metric(kind: str, name: str, doc: str, labels: tuple[str, ...]):
    """Created once per process on the default registry (the server's /metrics)."""
    if _prom is None:
        return None
    m = _metrics.get(name)
    if m is None:
        m = getattr(_prom, kind)(name, doc, labels)
        _metrics[name] = m
    return m


def count(stats: collections.Counter, key: str, name: str, doc: str, **labels) -> None:
    """stats[key] += 1, and the Prometheus counter `name` with `labels`."""
    stats[key] += 1
    try:  # metrics must never break the engine's logic
        m = metric("Counter", name, doc, tuple(labels))
        if m is not None:
            m.labels(**labels).inc()
    except Exception as exc:  # pragma: no cover
        log.error("metric %s: %s", name, exc)
