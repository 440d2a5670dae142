"""Domain values: small frozen dataclasses, validated once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

DEFAULT_THRESHOLD_MB = 1024  # a GPU with this much memory used (or more) is in use


def at_threshold(memory_used_mb: int, threshold_mb: int) -> bool:
    """The one rule for "in use": at or above the threshold. The documents show a GPU with
    1024MB used as IN USE WITHOUT RESERVATION under their 1 GB threshold (DESIGN.md)."""
    return memory_used_mb >= threshold_mb


@dataclass(frozen=True)
class GpuProcess:
    """A process that has memory on a GPU, as a provider reports it."""

    pid: int
    name: str
    user: str  # "unknown" when the owner cannot be read (containers, other PID namespaces)
    used_memory_mb: int | None = None
    cmdline: tuple[str, ...] = ()


@dataclass(frozen=True)
class GpuUsage:
    """What one GPU is actually doing, from one scan."""

    index: int
    name: str = ""
    uuid: str | None = None
    memory_used_mb: int = 0
    memory_total_mb: int = 0
    processes: tuple[GpuProcess, ...] = ()
    error: str | None = None  # set when the provider could not read this GPU
    utilization_pct: int | None = None  # compute utilisation; None when the GPU cannot tell

    @property
    def users(self) -> tuple[str, ...]:
        """Distinct owners of the processes, in order of first appearance."""
        return tuple(dict.fromkeys(p.user for p in self.processes))


@dataclass(frozen=True)
class Hold:
    """A live reservation of one GPU. Leases that are gone never become a Hold."""

    gpu: int
    rid: str  # reservation id, shared by all GPUs of one reservation
    user: str
    kind: str  # one of request.KINDS
    start_ms: int
    uid: int = -1
    host: str = ""
    pid: int = 0
    pid_start: float = 0.0  # process start time, so a reused PID is not mistaken for the owner
    heartbeat_ms: int = 0
    expires_ms: int | None = None  # manual reservations: when the lease runs out
    note: str = ""
    waiting: bool = False  # granted to a queued request that still waits for the rest
    machine: str = ""  # the real machine that made it (a daemon judges only its own PIDs)
    name: str = ""  # a detached job's name (kind "job")


@dataclass(frozen=True)
class GpuState:
    """One GPU as status shows it: its hold (if any), its release history and its usage."""

    gpu: int
    hold: Hold | None = None
    last_released_ms: int | None = None
    usage: GpuUsage | None = None
    threshold_mb: int = DEFAULT_THRESHOLD_MB
    corrupt: str | None = None  # its stored state cannot be read: the message names the key
    idle_since_ms: int | None = None  # its reservation's GPUs idle since then (the daemon's scan)

    @property
    def error(self) -> str | None:
        """Why this GPU cannot be judged: its state in Redis or its provider reading."""
        if self.corrupt:
            return self.corrupt
        return self.usage.error if self.usage is not None else None

    @property
    def in_use(self) -> bool:
        """Used memory at or above the threshold: someone is computing on it."""
        return self.usage is not None and at_threshold(self.usage.memory_used_mb,
                                                       self.threshold_mb)

    @property
    def errored(self) -> bool:
        """Not held and unreadable by the provider: never handed out, like unreserved use."""
        return self.corrupt is not None or (
            self.hold is None and self.usage is not None and self.usage.error is not None)

    @property
    def unreserved(self) -> bool:
        """In use without a live reservation: excluded from allocation."""
        return self.hold is None and self.in_use and not self.errored

    @property
    def available(self) -> bool:
        return self.hold is None and not self.in_use and not self.errored

    @property
    def status(self) -> str:
        """'reserved', 'error', 'unreserved' or 'available': exactly one per GPU."""
        if self.corrupt is None and self.hold is not None:
            return "reserved"
        if self.errored:
            return "error"
        return "unreserved" if self.in_use else "available"


@dataclass(frozen=True)
class PoolView:
    """Everything status needs, read at one instant `now_ms`."""

    now_ms: int
    gpus: tuple[GpuState, ...]
    provider: str = "fake"
    scanned_ms: int | None = None  # when the usage was scanned (None: no usage known)
    queue: tuple = field(default=())


@dataclass(frozen=True)
class Usage:
    """One scan of every GPU, from this process or from the daemon's snapshot."""

    scanned_ms: int
    gpus: tuple[GpuUsage, ...]
    source: str = "cli"
    # the daemon's scanner: reservation id -> {"since": ms its GPUs have been idle since
    # (None: busy), "warned": whether its idle warning went out} (idle.py)
    idle: dict = field(default_factory=dict)

    def busy(self, threshold_mb: int) -> list[int]:
        return [g.index for g in self.gpus if at_threshold(g.memory_used_mb, threshold_mb)]

    def errors(self) -> list[int]:
        return [g.index for g in self.gpus if g.error]

    def busy_csv(self, threshold_mb: int) -> str:
        """What the queue's grants need from a scan: GPUs in use or unreadable."""
        return ",".join(map(str, self.busy(threshold_mb) + self.errors()))

    def to_json(self, threshold_mb: int) -> dict:
        """The stored snapshot (every GPU's facts), which status reads instead of scanning;
        the script that stores it stamps it with Redis's clock."""
        return {"source": self.source, "threshold_mb": threshold_mb, "idle": self.idle,
                "gpus": [{**vars(g), "processes": [{**vars(p), "cmdline": list(p.cmdline)}
                                                    for p in g.processes]}
                         for g in self.gpus]}

    @classmethod
    def from_json(cls, data: dict) -> Usage:
        gpus = []
        for g in data.get("gpus", []):
            procs = tuple(GpuProcess(**{**p, "cmdline": tuple(p.get("cmdline") or ())})
                          for p in g.get("processes", []))
            gpus.append(GpuUsage(**{**g, "processes": procs}))
        idle = data.get("idle") if isinstance(data.get("idle"), dict) else {}
        return cls(int(data["scanned_ms"]), tuple(gpus), data.get("source", "cli"), idle)


@dataclass(frozen=True)
class Waiter:
    """A request waiting in the FIFO queue, with what it was granted so far."""

    wid: str
    user: str
    kind: str  # what it becomes once granted: one of request.KINDS
    enqueued_ms: int
    deadline_ms: int  # its heartbeat moves this; past it, the waiter leaves
    count: int | None = None
    ids: tuple[int, ...] | None = None
    note: str = ""
    uid: int = -1
    granted: tuple[int, ...] = ()

    @property
    def want(self) -> int:
        return len(self.ids) if self.ids is not None else int(self.count or 0)


@dataclass(frozen=True)
class Record:
    """One GPU of one reservation in the accounting: ended (history) or in progress."""

    gpu: int
    rid: str
    user: str
    kind: str
    start_ms: int
    end_ms: int
    reason: str = ""
    note: str = ""


@dataclass(frozen=True)
class State:
    """The host's pool, reservations and queue, read at one instant `now_ms` (Redis time)."""

    now_ms: int
    count: int
    provider: str
    holds: dict  # gpu -> Hold: live reservations only
    released: dict  # gpu -> (ms, user) of the last release
    queue: tuple  # Waiter, in arrival order, live ones only
    corrupt: dict  # gpu -> message naming the key, for GPUs whose state cannot be read


def seen_by(view: PoolView, user: str | None, admin: bool = False) -> PoolView:
    """The view as `user` may see it: command lines (which often hold tokens) of other
    users' processes are cut to the model detected in them. user None: nobody's (the web
    page, the HTTP API); an admin sees everything."""
    if admin:
        return view

    def process(p: GpuProcess) -> GpuProcess:
        if p.user == user or not p.cmdline:
            return p
        from .gpu.models import detect_model
        found = detect_model(p.cmdline)
        return replace(p, cmdline=("--model", found) if found else ())

    def gpu(g: GpuState) -> GpuState:
        if g.usage is None or not g.usage.processes:
            return g
        return replace(g, usage=replace(g.usage, processes=tuple(
            process(p) for p in g.usage.processes)))
    return replace(view, gpus=tuple(gpu(g) for g in view.gpus))
