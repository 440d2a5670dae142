"""`/metrics`: Prometheus metrics per host (docs/metrics.md lists each one).

Gauges are read at scrape time from the same status documents the API serves, so they
match `canhazgpu status --json`; counters and the wait-time histogram count the events this
server has seen since it started (Prometheus' rate() and increase() handle restarts).
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..events import Event
from .live import HostState

MIB = 1024 * 1024
ENDINGS = ("released", "expired", "reclaimed", "forced")
STATES = ("available", "reserved", "unreserved", "error")
WAIT_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
MAX_TRACKED_WAITERS = 10_000  # queued requests remembered for the wait-time histogram
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The registry of one web server: event counters plus gauges of the hosts' states."""

    def __init__(self, sse_clients=lambda: 0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.events = Counter("canhazgpu_events", "Events seen, by host and type.",
                              ["host", "type"], registry=self.registry)
        self.ended = Counter("canhazgpu_reservations_ended",
                             "Reservations ended, by host and reason "
                             "(released, expired, reclaimed, forced).",
                             ["host", "reason"], registry=self.registry)
        self.waits = Histogram("canhazgpu_queue_wait_seconds",
                               "Time from joining the queue to the complete grant.",
                               ["host"], buckets=WAIT_BUCKETS, registry=self.registry)
        self._queued: dict[tuple[str, str], int] = {}  # (host, waiter id) -> queued at (ms)
        self._states: list[HostState] = []
        self._sse_clients = sse_clients
        self.registry.register(self)

    def observe(self, event: Event) -> None:
        """Count one event (the live feed calls this once per event, in order)."""
        self.events.labels(event.host, event.type).inc()
        if event.type in ENDINGS:
            self.ended.labels(event.host, event.type).inc()
        key = (event.host, event.rid or "")
        if event.type == "queued" and len(self._queued) < MAX_TRACKED_WAITERS:
            self._queued[key] = event.time_ms
        elif event.type == "granted" and event.data.get("complete"):
            queued_ms = self._queued.pop(key, None)
            if queued_ms is not None:
                self.waits.labels(event.host).observe(max(0, event.time_ms - queued_ms) / 1000)
        elif event.type == "left":
            self._queued.pop(key, None)

    def render(self, states: list[HostState]) -> bytes:
        """The exposition text, with gauges from these freshly read states."""
        self._states = states
        return generate_latest(self.registry)

    def collect(self):
        """The gauges (prometheus_client calls this while rendering)."""
        g = _Gauges()
        g.add("web_sse_clients", "Clients connected to /api/v1/events.", [], self._sse_clients())
        for st in self._states:
            _host_gauges(g, st)
        return g.families.values()


class _Gauges:
    def __init__(self) -> None:
        self.families: dict[str, GaugeMetricFamily] = {}

    def add(self, name: str, doc: str, labels: list[tuple[str, str]], value: float) -> None:
        name = f"canhazgpu_{name}"
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = GaugeMetricFamily(name, doc, labels=[k for k, _ in labels])
        family.add_metric([v for _, v in labels], value)


def _host_gauges(g: _Gauges, st: HostState) -> None:
    host = [("host", st.host)]
    g.add("up", "1 when the host's state could be read (Redis reachable, pool set up).",
          host, 0 if st.error or st.status is None else 1)
    if st.daemon is not None:
        g.add("daemon_up", "1 when the host's daemon (canhazgpu serve) is running.", host,
              int(st.daemon))
    if st.error or st.status is None:
        return
    doc = st.status
    for state in STATES:
        g.add("gpus", "GPUs by state (available, reserved, unreserved, error).",
              host + [("state", state)], doc["summary"][state])
    gpus = Tally()
    reservations: dict[tuple[str, str], set] = {}
    for gpu in doc["gpus"]:
        labels = host + [("gpu", str(gpu["id"]))]
        if gpu["memory_used_mb"] is not None:
            g.add("gpu_memory_used_bytes", "Memory used on the GPU.", labels,
                  gpu["memory_used_mb"] * MIB)
            g.add("gpu_memory_total_bytes", "Memory of the GPU.", labels,
                  (gpu["memory_total_mb"] or 0) * MIB)
        if gpu["status"] == "unreserved":
            g.add("unreserved_gpu_memory_used_bytes",
                  "Memory used on a GPU that is in use without a reservation, with its users.",
                  labels + [("users", ",".join(gpu["users"]) or "unknown")],
                  gpu["memory_used_mb"] * MIB)
        if gpu.get("utilization_pct") is not None:
            g.add("gpu_utilization_percent", "Compute utilisation of the GPU.", labels,
                  gpu["utilization_pct"])
        res = gpu["reservation"]
        if res is not None and res.get("idle_s") is not None:
            g.add("reservation_idle_seconds", "How long a reserved GPU has been idle "
                  "(docs/idle.md), with its holder.", labels + [("user", res["user"])],
                  res["idle_s"])
        if res is not None:
            gpus[(res["user"], res["type"])] += 1
            reservations.setdefault((res["user"], res["type"]), set()).add(res["id"])
    for (user, kind), count in sorted(gpus.items()):
        g.add("reserved_gpus", "GPUs reserved, by user and kind (run, manual).",
              host + [("user", user), ("kind", kind)], count)
        g.add("reservations", "Live reservations, by user and kind (run, manual).",
              host + [("user", user), ("kind", kind)], len(reservations[(user, kind)]))
    queue = st.queue or []
    g.add("queue_length", "Requests waiting in the queue.", host, len(queue))
    g.add("queue_oldest_wait_seconds", "How long the oldest request has waited (0: none).",
          host, max((r["waiting_s"] for r in queue), default=0))
    if doc["scanned_ms"] is not None:
        g.add("scan_age_seconds", "Time since the GPUs were last scanned.", host,
              max(0, doc["time_ms"] - doc["scanned_ms"]) / 1000)
