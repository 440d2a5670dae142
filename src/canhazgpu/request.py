"""What callers ask the core for, and what they get back; parsed and validated at the edge."""

from __future__ import annotations

import json

from .errors import InvalidRequest
from .model import Value, fill
from .text import check_note
from .timefmt import MAX_DURATION_S

# What a reservation is: manual (a duration), or held by a living process's heartbeat: a
# `run` supervisor, a Python program (the Python API) or a Jupyter kernel (its provisioner).
# A detached `job` (docs/jobs.md) is held by its runner's heartbeat too, but the pid in its
# record is its agent's (which may die while the job runs): only its lease ends it.
KINDS = ("run", "job", "manual", "python", "kernel")
HELD_BY_PROCESS = ("run", "python", "kernel")  # heartbeat leases; the owner pid is watched
HEARTBEAT = (*HELD_BY_PROCESS, "job")  # leases kept by a heartbeat, not by a duration


class Request(Value):
    """What a caller asks for: a count or specific ids, of one kind (one of KINDS), for a
    while (duration_s: a manual reservation's length). claim_own: GPUs in unreserved use
    by the caller's own processes too. Checked once, whichever edge made it (the CLI, the
    API, the Python API)."""

    __slots__ = ("count", "ids", "kind", "duration_s", "note", "claim_own")

    def __init__(self, count: int | None = None, ids: tuple[int, ...] | None = None,
                 kind: str = "manual", duration_s: float = 1800.0, note: str = "",
                 claim_own: bool = False) -> None:
        fill(self, locals())
        if self.kind not in KINDS:
            raise InvalidRequest(f"invalid kind {str(self.kind)[:40]!r}: use one of "
                                 f"{', '.join(KINDS)}")
        if not (0 < self.duration_s or self.kind != "manual" and self.duration_s == 0) \
                or not self.duration_s <= MAX_DURATION_S:  # also refuses NaN
            raise InvalidRequest(f"invalid duration {self.duration_s!r}s: above 0, at most "
                                 f"{MAX_DURATION_S}s (366d)")
        if self.count is not None and self.ids is None and \
                not 1 <= self.count <= MAX_POOL_GPUS:
            raise InvalidRequest(f"invalid GPU count {self.count!r}: use a whole number from "
                                 f"1 to {MAX_POOL_GPUS}")
        if self.ids is not None and (len(set(self.ids)) != len(self.ids) or not self.ids
                                     or not all(0 <= i < MAX_POOL_GPUS for i in self.ids)):
            raise InvalidRequest(f"invalid GPU ids {self.ids!r}: distinct numbers from 0 to "
                                 f"{MAX_POOL_GPUS - 1}")
        check_note(self.note)

    @property
    def size(self) -> int:
        return len(self.ids) if self.ids is not None else int(self.count or 0)


class Reservation(Value):
    """A granted reservation: what a supervisor needs to keep it alive and end it.
    record: the json the scripts store with each hold."""

    __slots__ = ("rid", "gpus", "user", "kind", "ttl_s", "record")

    def __init__(self, rid: str, gpus: tuple[int, ...], user: str, kind: str, ttl_s: float,
                 record: dict) -> None:
        fill(self, locals())

    def env_value(self) -> str:
        return ",".join(str(i) for i in self.gpus)


class QueueStatus(Value):
    """Where a waiter stands: 1-based position (0 once out of the queue), GPUs so far."""

    __slots__ = ("position", "gpus", "done", "queued")

    def __init__(self, position: int, gpus: tuple[int, ...], done: bool, queued: int) -> None:
        fill(self, locals())

    @classmethod
    def decode(cls, data: str) -> QueueStatus:
        return cls.from_doc(json.loads(data))

    @classmethod
    def from_doc(cls, doc: dict) -> QueueStatus:
        gpus = doc.get("gpus") or []
        return cls(int(doc["position"]), tuple(gpus if isinstance(gpus, list) else ()),
                   bool(doc["done"]), int(doc.get("queued", 0)))


MAX_POOL_GPUS = 1024  # one Redis key per GPU: a typo must not ask Redis for millions


def whole_number(text) -> int | None:
    """A whole number written in ASCII digits (int() also takes '١' or ' +3'), else None."""
    text = str(text).strip()
    return int(text) if text.isascii() and text.isdigit() else None


def parse_count(text, pool_size: int | None = None) -> int:
    """A GPU count from the user: a whole number from 1 to the pool size (without a pool:
    to MAX_POOL_GPUS)."""
    count = whole_number(text) or 0
    if count < 1 or (pool_size is None and count > MAX_POOL_GPUS):
        limit = f"1 to {pool_size}" if pool_size else f"1 to {MAX_POOL_GPUS}"
        raise InvalidRequest(f"invalid GPU count {text!r}: use a whole number from {limit}")
    if pool_size is not None and count > pool_size:
        raise InvalidRequest(
            f"invalid GPU count {count}: this pool has {pool_size} GPUs (use 1 to {pool_size})"
        )
    return count


def parse_ids(text: str, pool_size: int | None = None) -> tuple[int, ...]:
    """GPU ids from the user, e.g. '1,3': distinct whole numbers inside the pool."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(whole_number(p) is None for p in parts):
        raise InvalidRequest(f"invalid GPU ids {text!r}: use comma-separated numbers, e.g. 1,3")
    ids = tuple(int(p) for p in parts)
    if len(set(ids)) != len(ids):
        raise InvalidRequest(f"invalid GPU ids {text!r}: each GPU may appear only once")
    if pool_size is not None:
        outside = [i for i in ids if i >= pool_size]
        if outside:
            raise InvalidRequest(
                f"invalid GPU id {outside[0]}: this pool has GPUs 0 to {pool_size - 1}"
            )
    return ids
