"""[scoring]: the values (the names, defaults and meanings are declared in pop53.schema)."""
from __future__ import annotations

import os

from pop53.errors import ConfigError

# key -> (default, minimum, maximum); the data plane's Scorer takes them as keyword arguments
LIMITS = {
    "source_rate": (2000, 1, 1_000_000),
    "known_rate": (20000, 1, 1_000_000),
    "window_ms": (1000, 10, 60000),
    "tick_ms": (10, 1, 1000),
    "full_run": (4, 1, 1000),
    "recover": (32, 1, 1024),
    "delay_target_us": (2000, 1, 10_000_000),
    "nx_rate": (1000, 1, 1_000_000),
    "known_addr_rate": (20000, 1, 1_000_000),
    "trust_after_ms": (1000, 0, 86_400_000),
    "known_nx_percent": (50, 1, 100),
}


def parse_settings(raw, file: str | None, base_dir: str | None = None) -> dict | None:
    """The [scoring] table -> {"scorer": Scorer keyword arguments, "known_resolvers": path or
    None, "learn": Learner arguments or None}; None when the table is absent or `enabled = false` (scoring off)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("must be a table", file=file, key="scoring")

    def typed(name, kind, default):
        v = raw.get(name, default)
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise ConfigError(f"expected {kind.__name__}, got {v!r}", file=file, key=f"scoring.{name}")
        return v

    if not typed("enabled", bool, True):
        return None
    scorer = {}
    for name, (default, lo, hi) in LIMITS.items():
        v = typed(name, int, default)
        if not lo <= v <= hi:
            raise ConfigError(f"must be within {lo}..{hi}, got {v}", file=file, key=f"scoring.{name}")
        scorer[name] = v
    for name in ("source_rate", "known_rate", "nx_rate", "known_addr_rate"):
        if not 1 <= scorer[name] * scorer["window_ms"] // 1000 < 65535:
            raise ConfigError(f"times window_ms must make 1..65534 queries per window",
                              file=file, key=f"scoring.{name}")
    scorer["rd_odd"] = typed("rd_odd", bool, True)
    scorer["yield_when_cut"] = typed("yield_when_cut", bool, True)
    scorer["kernel_stamps"] = typed("kernel_stamps", bool, False)
    steer = typed("steer", bool, False)
    steer_cookies = typed("steer_cookies", bool, True)
    steer_idle = typed("steer_idle", bool, True)
    steer_names = typed("steer_names", bool, True)
    queue_bytes = typed("queue_bytes", int, 0)
    if queue_bytes and not 4096 <= queue_bytes <= 1 << 30:
        raise ConfigError(f"must be 0 or within 4096..{1 << 30}, got {queue_bytes}", file=file,
                          key="scoring.queue_bytes")
    queue_ms = raw.get("queue_ms", 32)
    if isinstance(queue_ms, bool) or not isinstance(queue_ms, (int, float)) or not 0 <= queue_ms <= 1000:
        raise ConfigError(f"expected milliseconds within 0..1000, got {queue_ms!r}", file=file,
                          key="scoring.queue_ms")
    window = raw.get("learn_window", 0)
    if isinstance(window, bool) or not isinstance(window, (int, float)) or window < 0:
        raise ConfigError(f"expected seconds >= 0, got {window!r}", file=file, key="scoring.learn_window")
    learn = None
    if window:
        windows, need = typed("learn_windows", int, 7), typed("learn_min", int, 3)
        if not 1 <= windows <= 1000:
            raise ConfigError(f"must be within 1..1000, got {windows}", file=file, key="scoring.learn_windows")
        if not 1 <= need <= windows:
            raise ConfigError(f"must be within 1..learn_windows, got {need}", file=file, key="scoring.learn_min")
        learn = {"window": float(window), "windows": windows, "need": need}
    aging = {}
    for name, default, hi in (("trust_ttl", 86400, 30 * 86400), ("strict_calm", 600, 30 * 86400)):
        v = raw.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= hi:
            raise ConfigError(f"expected seconds within 1..{hi}, got {v!r}", file=file,
                              key=f"scoring.{name}")
        aging[name] = float(v)
    path = typed("known_resolvers", str, "") or None
    if path and base_dir and not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    return {"scorer": scorer, "known_resolvers": path, "learn": learn, "steer": steer,
            "steer_cookies": steer_cookies, "steer_idle": steer_idle, "steer_names": steer_names,
            "queue_bytes": queue_bytes, "queue_ms": float(queue_ms), "aging": aging}
