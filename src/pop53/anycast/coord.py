"""Cluster-wide suspension slots in etcd: at most K machines self-suspend at once.

Paper §4.2.1: a widespread nameserver failure or a bug in the agent could suspend many machines at
once, so "the Monitoring/Automated Recovery system limits concurrent nameserver suspensions using
a distributed consensus algorithm".  We use etcd (Raft) as that consensus: K slot keys
``<prefix>/slots/<i>``; a machine may withdraw its routes only while it holds one.

A slot is taken with a transaction that puts the key only if it does not exist
(``create_revision == 0``), attached to the machine's lease.  The lease is kept alive while the
machine holds the slot; a holder that dies stops keeping it alive and etcd deletes the key when
the lease's TTL runs out, freeing the slot for someone else.

The client speaks etcd's v3 HTTP/JSON gateway (``/v3/...``, keys and values base64) with urllib
from the standard library: no extra dependency, and the same API etcd 3.4 (Debian) serves.

Safety when etcd is unreachable: `SlotClient.acquire` raises `CoordUnavailable`, so a machine
without a slot never suspends; a machine holding a slot keeps it only until its lease could have
expired on the server (last successful keepalive + TTL), after which it must treat the slot as
lost, because another machine may already hold it.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from pop53.errors import Pop53Error


class CoordError(Pop53Error):
    """The slot protocol failed (unexpected etcd answer)."""


class CoordUnavailable(CoordError):
    """etcd could not be reached (every endpoint failed)."""


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode("ascii")


def _unb64(s: str) -> str:
    return base64.b64decode(s).decode(errors="replace")


def _prefix_end(key: str) -> bytes:
    """The range_end that selects every key starting with `key` (etcd's "prefix" convention)."""
    b = bytearray(key.encode())
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


class EtcdClient:
    """Minimal etcd v3 JSON-gateway client (lease, kv range/txn/delete)."""

    def __init__(self, endpoints: list[str], timeout: float = 2.0):
        if not endpoints:
            raise CoordError("no etcd endpoints configured")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout

    def call(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        errors = []
        for ep in self.endpoints:
            req = urllib.request.Request(f"{ep}{path}", data=data,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read() or b"{}")
            except urllib.error.HTTPError as exc:
                # The gateway maps gRPC errors to HTTP errors with a JSON body; a lease that no
                # longer exists comes back this way.
                try:
                    detail = json.loads(exc.read() or b"{}")
                except ValueError:
                    detail = {}
                raise CoordError(f"etcd {path}: HTTP {exc.code} "
                                 f"{detail.get('message') or detail.get('error') or ''}".strip())
            except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
                errors.append(f"{ep}: {getattr(exc, 'reason', exc)}")
        raise CoordUnavailable(f"etcd unreachable ({'; '.join(errors)})")

    def healthy(self) -> bool:
        try:
            self.call("/v3/maintenance/status", {})
            return True
        except CoordError:
            return False

    # leases
    def grant(self, ttl: int) -> tuple[int, int]:
        r = self.call("/v3/lease/grant", {"TTL": ttl})
        if "ID" not in r:
            raise CoordError(f"lease grant: unexpected answer {r}")
        return int(r["ID"]), int(r.get("TTL", ttl))

    def keepalive(self, lease: int) -> int:
        """Refresh `lease`; returns the remaining TTL (0 or less: the lease is gone)."""
        r = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        res = r.get("result", r)
        return int(res.get("TTL", 0))

    def revoke(self, lease: int) -> None:
        try:
            self.call("/v3/lease/revoke", {"ID": str(lease)})
        except CoordError as exc:
            if isinstance(exc, CoordUnavailable):
                raise

    # kv
    def range_prefix(self, prefix: str) -> dict[str, tuple[str, int]]:
        """{key: (value, lease)} for every key under `prefix`."""
        r = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))})
        out = {}
        for kv in r.get("kvs", []) or []:
            out[_unb64(kv["key"])] = (_unb64(kv.get("value", "")), int(kv.get("lease", 0)))
        return out

    def put_if_absent(self, key: str, value: str, lease: int) -> bool:
        """Transactional create: succeeds only if `key` does not exist (create_revision == 0)."""
        r = self.call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value),
                                         "lease": str(lease)}}],
            "failure": [],
        })
        return bool(r.get("succeeded", False))

    def delete_if_value(self, key: str, value: str) -> bool:
        r = self.call("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "VALUE", "result": "EQUAL",
                         "value": _b64(value)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
            "failure": [],
        })
        return bool(r.get("succeeded", False))


@dataclass
class SlotStatus:
    slot: int | None
    lease: int | None
    valid_until: float | None   # monotonic; after this we may no longer believe we hold it
    error: str | None = None


class SlotClient:
    """K suspension slots under `prefix`, shared by every machine of a cluster."""

    def __init__(self, endpoints: list[str], *, holder: str, slots: int, prefix: str = "/pop53",
                 ttl: int = 10, timeout: float = 2.0):
        if slots < 0:
            raise CoordError("slots must be >= 0")
        if ttl < 2:
            raise CoordError("lease ttl must be >= 2 seconds")
        self.etcd = EtcdClient(endpoints, timeout=timeout)
        self.holder = holder
        self.slots = slots
        self.prefix = prefix.rstrip("/")
        self.ttl = ttl
        # Give the slot up this long before the lease could expire on the server, so the agent
        # re-announces before another machine can take the slot.
        self.margin = min(1.0, ttl / 4)
        self.lease: int | None = None
        self.slot: int | None = None
        self._valid_until: float | None = None
        self.last_error: str | None = None
        # acquire/keepalive/release may run from the agent's loop and its keepalive thread.
        self._lock = threading.RLock()

    def key(self, i: int) -> str:
        return f"{self.prefix}/slots/{i}"

    @property
    def held(self) -> int | None:
        """The slot we hold, or None.  Stops counting once the lease may have expired."""
        if self.slot is not None and self._valid_until is not None \
                and time.monotonic() >= self._valid_until - self.margin:
            self.slot = None
            self.last_error = "slot lost: lease could not be renewed before its TTL ran out"
        return self.slot

    def status(self) -> SlotStatus:
        return SlotStatus(self.held, self.lease, self._valid_until, self.last_error)

    def holders(self) -> dict[int, str]:
        """Who holds which slot right now (from etcd)."""
        kvs = self.etcd.range_prefix(f"{self.prefix}/slots/")
        out = {}
        for k, (v, _lease) in kvs.items():
            try:
                out[int(k.rsplit("/", 1)[1])] = v
            except ValueError:
                continue
        return out

    def _ensure_lease(self) -> int:
        if self.lease is not None:
            t0 = time.monotonic()
            ttl = self.etcd.keepalive(self.lease)
            if ttl > 0:
                self._valid_until = t0 + ttl
                return self.lease
            self.lease = None
        t0 = time.monotonic()
        self.lease, ttl = self.etcd.grant(self.ttl)
        self._valid_until = t0 + ttl
        return self.lease

    def _acquire_unlocked(self) -> int | None:
        """Take a free slot (or confirm the one we hold).  None: all K are taken.

        Raises CoordUnavailable if etcd cannot be reached: the caller must then not suspend.
        """
        if self.held is not None:
            if self._keepalive_unlocked():
                return self.slot
        try:
            lease = self._ensure_lease()
            current = self.holders()
            for i, who in current.items():
                if who == self.holder and i < self.slots:
                    # Ours from before (e.g. an agent restart within the lease's TTL); re-take it
                    # under the current lease so it expires with us.
                    if self.etcd.delete_if_value(self.key(i), self.holder) and \
                            self.etcd.put_if_absent(self.key(i), self.holder, lease):
                        self.slot = i
                        self.last_error = None
                        return i
            for i in range(self.slots):
                if i in current:
                    continue
                if self.etcd.put_if_absent(self.key(i), self.holder, lease):
                    self.slot = i
                    self.last_error = None
                    return i
            self.last_error = f"all {self.slots} suspension slots are taken"
            return None
        except CoordUnavailable as exc:
            self.last_error = str(exc)
            raise

    def _keepalive_unlocked(self) -> bool:
        """Refresh the lease of the slot we hold.  False: we no longer hold it."""
        if self.slot is None or self.lease is None:
            return False
        try:
            t0 = time.monotonic()
            ttl = self.etcd.keepalive(self.lease)
        except CoordUnavailable as exc:
            self.last_error = str(exc)
            return self.held is not None  # still ours until the TTL could have run out
        except CoordError as exc:
            ttl = 0
            self.last_error = str(exc)
        if ttl <= 0:
            self.slot = None
            self.lease = None
            self._valid_until = None
            self.last_error = "slot lost: lease expired"
            return False
        self._valid_until = t0 + ttl
        return self.held is not None

    def _release_unlocked(self) -> None:
        """Give the slot back (and drop the lease).  Unreachable etcd: the lease expires anyway."""
        slot, lease = self.slot, self.lease
        self.slot = None
        self._valid_until = None
        self.lease = None
        if slot is not None:
            try:
                self.etcd.delete_if_value(self.key(slot), self.holder)
            except CoordError as exc:
                self.last_error = str(exc)
        if lease is not None:
            try:
                self.etcd.revoke(lease)
            except CoordError as exc:
                self.last_error = str(exc)

    def acquire(self) -> int | None:
        """Take a free slot (or confirm the one we hold).  None: all K are taken.

        Raises CoordUnavailable if etcd cannot be reached: the caller must then not suspend.
        """
        with self._lock:
            return self._acquire_unlocked()

    def keepalive(self) -> bool:
        """Refresh the lease of the slot we hold.  False: we no longer hold it."""
        with self._lock:
            return self._keepalive_unlocked()

    def release(self) -> None:
        """Give the slot back (and drop the lease).  Unreachable etcd: the lease expires anyway."""
        with self._lock:
            self._release_unlocked()

    def keepalive_forever(self, stop: threading.Event) -> threading.Thread:
        """Renew the held slot's lease every TTL/3 s in a thread, independent of how long a probe
        round takes (a hung server makes rounds slow; the slot must not expire meanwhile)."""
        def loop() -> None:
            while not stop.wait(max(0.2, self.ttl / 3)):
                if self.slot is not None:
                    self.keepalive()

        th = threading.Thread(target=loop, name="pop53-slot-keepalive", daemon=True)
        th.start()
        return th
