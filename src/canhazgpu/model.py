"""Domain values: small immutable values (Value), validated once at the edge."""

from __future__ import annotations

DEFAULT_THRESHOLD_MB = 1024  # a GPU with this much memory used (or more) is in use


def at_threshold(memory_used_mb: int, threshold_mb: int) -> bool:
    """The one rule for "in use": at or above the threshold. The documents show a GPU with
    1024MB used as IN USE WITHOUT RESERVATION under their 1 GB threshold (DESIGN.md)."""
    return memory_used_mb >= threshold_mb


class _Fields(dict):
    """`__dataclass_fields__` of a Value class, so that dataclasses' replace(), asdict() and
    fields(), and the API's encoder, take it for the frozen dataclass it stands for: the
    field names at once (all the encoder reads), dataclasses' Field objects built from the
    __init__ when first asked for (dataclasses and the build cost ~3 ms)."""

    def __init__(self, cls: type) -> None:
        super().__init__(dict.fromkeys(cls.__slots__))
        self._cls: type | None = cls

    def _built(self) -> _Fields:
        if self._cls is not None:
            import dataclasses
            import inspect
            params = list(inspect.signature(self._cls.__init__).parameters.values())[1:]
            spec = [(p.name, p.annotation) if p.default is p.empty
                    else (p.name, p.annotation, dataclasses.field(default=p.default))
                    for p in params]
            # (a shadow class that only declares the fields: no methods generated)
            self.update(dataclasses.make_dataclass(self._cls.__name__, spec, init=False,
                                                   repr=False, eq=False).__dataclass_fields__)
            self._cls = None
        return self

    def values(self):
        return dict.values(self._built())

    def items(self):
        return dict.items(self._built())

    def __getitem__(self, name: str):
        return dict.__getitem__(self._built(), name)

    def get(self, name: str, default=None):
        return dict.get(self._built(), name, default)


class Value:
    """A small immutable value: a frozen dataclass without its cost at import (a dataclass
    generates and compiles six methods, ~0.5 ms a class: a third of a command's own
    start-up). A subclass names its fields in __slots__, in the order of its __init__'s
    parameters, and its __init__ sets them with `fill(self, locals())`; equality, hash,
    repr, copy and pickling come from the fields, as a dataclass's do."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.__dataclass_fields__ = _Fields(cls)

    def _values(self) -> tuple:
        return tuple([getattr(self, name) for name in self.__slots__])

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return (f"{type(self).__qualname__}("
                + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")")

    def __reduce__(self):
        return type(self), self._values()

    def __setattr__(self, name, value):
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"cannot delete field {name!r}")


_set = object.__setattr__


def fill(value: Value, values: dict) -> None:
    """Set a Value's fields from its __init__'s locals()."""
    for name in value.__slots__:
        _set(value, name, values[name])


def as_dict(value: Value) -> dict:
    """A Value's fields (shallow: the nested values stay as they are)."""
    return {name: getattr(value, name) for name in value.__slots__}


def replace(value: Value, **changes) -> Value:
    """The value with some fields changed (dataclasses.replace, without dataclasses)."""
    return type(value)(**{**as_dict(value), **changes})


class GpuProcess(Value):
    """A process that has memory on a GPU, as a provider reports it."""

    __slots__ = ("pid", "name", "user", "used_memory_mb", "cmdline")

    def __init__(self, pid: int, name: str, user: str, used_memory_mb: int | None = None,
                 cmdline: tuple[str, ...] = ()) -> None:
        # user: "unknown" when the owner cannot be read (containers, other PID namespaces)
        fill(self, locals())


class GpuUsage(Value):
    """What one GPU is actually doing, from one scan."""

    __slots__ = ("index", "name", "uuid", "memory_used_mb", "memory_total_mb", "processes",
                 "error", "utilization_pct")

    def __init__(self, index: int, name: str = "", uuid: str | None = None,
                 memory_used_mb: int = 0, memory_total_mb: int = 0,
                 processes: tuple[GpuProcess, ...] = (), error: str | None = None,
                 utilization_pct: int | None = None) -> None:
        # error: set when the provider could not read this GPU;
        # utilization_pct: compute utilisation, None when the GPU cannot tell
        fill(self, locals())

    @property
    def users(self) -> tuple[str, ...]:
        """Distinct owners of the processes, in order of first appearance."""
        return tuple(dict.fromkeys(p.user for p in self.processes))


class Hold(Value):
    """A live reservation of one GPU. Leases that are gone never become a Hold.

    rid: the reservation's id, shared by all its GPUs; kind: one of request.KINDS;
    pid_start: the owner's start time, so a reused PID is not mistaken for the owner;
    expires_ms: when a manual reservation's lease runs out; waiting: granted to a queued
    request that still waits for the rest; machine: the real machine that made it (a
    daemon judges only its own PIDs); name: a detached job's name (kind "job").
    """

    __slots__ = ("gpu", "rid", "user", "kind", "start_ms", "uid", "host", "pid", "pid_start",
                 "heartbeat_ms", "expires_ms", "note", "waiting", "machine", "name")

    def __init__(self, gpu: int, rid: str, user: str, kind: str, start_ms: int,
                 uid: int = -1, host: str = "", pid: int = 0, pid_start: float = 0.0,
                 heartbeat_ms: int = 0, expires_ms: int | None = None, note: str = "",
                 waiting: bool = False, machine: str = "", name: str = "") -> None:
        fill(self, locals())


class GpuState(Value):
    """One GPU as status shows it: its hold (if any), its release history and its usage.
    corrupt: its stored state cannot be read (the message names the key); idle_since_ms:
    its reservation's GPUs idle since then (the daemon's scan)."""

    __slots__ = ("gpu", "hold", "last_released_ms", "usage", "threshold_mb", "corrupt",
                 "idle_since_ms")

    def __init__(self, gpu: int, hold: Hold | None = None, last_released_ms: int | None = None,
                 usage: GpuUsage | None = None, threshold_mb: int = DEFAULT_THRESHOLD_MB,
                 corrupt: str | None = None, idle_since_ms: int | None = None) -> None:
        fill(self, locals())

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


class PoolView(Value):
    """Everything status needs, read at one instant `now_ms`. scanned_ms: when the usage
    was scanned (None: no usage known)."""

    __slots__ = ("now_ms", "gpus", "provider", "scanned_ms", "queue")

    def __init__(self, now_ms: int, gpus: tuple[GpuState, ...], provider: str = "fake",
                 scanned_ms: int | None = None, queue: tuple = ()) -> None:
        fill(self, locals())


class Usage(Value):
    """One scan of every GPU, from this process or from the daemon's snapshot.
    idle: the daemon's scanner's reservation id -> {"since": ms its GPUs have been idle
    since (None: busy), "warned": whether its idle warning went out} (idle.py)."""

    __slots__ = ("scanned_ms", "gpus", "source", "idle")

    def __init__(self, scanned_ms: int, gpus: tuple[GpuUsage, ...], source: str = "cli",
                 idle: dict | None = None) -> None:
        idle = {} if idle is None else idle
        fill(self, locals())

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
                "gpus": [{**as_dict(g), "processes": [{**as_dict(p), "cmdline": list(p.cmdline)}
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


class Waiter(Value):
    """A request waiting in the FIFO queue, with what it was granted so far.
    kind: what it becomes once granted (one of request.KINDS); deadline_ms: its heartbeat
    moves this, and past it the waiter leaves."""

    __slots__ = ("wid", "user", "kind", "enqueued_ms", "deadline_ms", "count", "ids", "note",
                 "uid", "granted")

    def __init__(self, wid: str, user: str, kind: str, enqueued_ms: int, deadline_ms: int,
                 count: int | None = None, ids: tuple[int, ...] | None = None, note: str = "",
                 uid: int = -1, granted: tuple[int, ...] = ()) -> None:
        fill(self, locals())

    @property
    def want(self) -> int:
        return len(self.ids) if self.ids is not None else int(self.count or 0)


class Record(Value):
    """One GPU of one reservation in the accounting: ended (history) or in progress."""

    __slots__ = ("gpu", "rid", "user", "kind", "start_ms", "end_ms", "reason", "note")

    def __init__(self, gpu: int, rid: str, user: str, kind: str, start_ms: int, end_ms: int,
                 reason: str = "", note: str = "") -> None:
        fill(self, locals())


class State(Value):
    """The host's pool, reservations and queue, read at one instant `now_ms` (Redis time):
    holds: gpu -> Hold, live reservations only; released: gpu -> (ms, user) of the last
    release; queue: the live Waiters in arrival order; corrupt: gpu -> message naming the
    key, for GPUs whose state cannot be read."""

    __slots__ = ("now_ms", "count", "provider", "holds", "released", "queue", "corrupt")

    def __init__(self, now_ms: int, count: int, provider: str, holds: dict, released: dict,
                 queue: tuple, corrupt: dict) -> None:
        fill(self, locals())


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
