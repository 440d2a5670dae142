"""Reads the web server needs that the core does not offer yet (thin; for the core to adopt).

- `queue_rows`: the rows of `canhazgpu queue --json`, from a PoolView (cli/wait.py builds
  the same rows inline from read_state; one function should serve both), plus `eta_s`.
- `last_seq` and `events_since`: the host's event counter and the replay of its capped
  event stream (Store.events_since, once the scripts XADD every event; until then this
  reads the stream key itself, and finds it empty).
- `daemon_up`: whether a daemon holds the host's lock.
"""

from __future__ import annotations

from ..events import Event
from ..model import PoolView
from ..request import QueueStatus
from ..store import Store
from ..waitqueue import estimate

STREAM_BATCH = 200  # entries read per XREVRANGE while looking for a sequence number


class _Fixed:
    """A stand-in core whose view is one we already read (estimate() asks a core for it)."""

    def __init__(self, view: PoolView) -> None:
        self._view = view

    async def view(self) -> PoolView:
        return self._view


async def queue_rows(view: PoolView) -> list[dict]:
    """Who waits, in order: `queue --json`'s rows, and `eta_s` for the head of the queue
    (when enough GPUs should be free, from manual reservations' expiry; None: unknown)."""
    now = view.now_ms
    rows: list[dict] = []
    for w in view.queue:
        if int(w.get("deadline_ms", 0)) < now:
            continue  # its waiter stopped heart-beating: gone, whether finalized or not
        wid = w["wid"]
        granted = sorted(g.gpu for g in view.gpus if g.hold is not None and g.hold.rid == wid)
        requested = w["ids"] if w.get("mode") == "ids" else int(w["count"])
        rows.append({"position": len(rows) + 1, "id": wid, "user": w["user"],
                     "requested": requested, "granted": granted,
                     "waiting_s": round((now - int(w["enqueued_ms"])) / 1000, 1),
                     "type": w.get("kind", ""), "note": w.get("note", ""), "eta_s": None})
    if rows:
        head = rows[0]
        want = len(head["requested"]) if isinstance(head["requested"], list) \
            else head["requested"]
        status = QueueStatus(1, tuple(head["granted"]), False, len(rows))
        head["eta_s"] = (await estimate(_Fixed(view), status, want)).eta_s
    return rows


async def last_seq(store: Store) -> int:
    """The sequence number of the host's latest event (0: none yet)."""
    return int(await store.guard(store.redis.get(store.key("seq"))) or 0)


async def events_since(store: Store, seq: int) -> list[Event]:
    """The host's events after `seq`, oldest first, as far back as its stream reaches."""
    own = getattr(store, "events_since", None)
    if own is not None:
        return list(await own(seq))
    key, found, top = store.key("stream"), [], "+"
    while True:
        entries = await store.guard(store.redis.xrevrange(key, top, "-", count=STREAM_BATCH))
        for entry_id, fields in entries:
            event = Event.decode(fields.get("doc", ""))
            if event is None:
                continue
            if event.seq <= seq:
                return found[::-1]
            found.append(event)
        if len(entries) < STREAM_BATCH:
            return found[::-1]
        top = "(" + entries[-1][0]


async def daemon_up(store: Store) -> bool:
    """Whether a daemon serves the host now (its lock key lives while it runs)."""
    return await store.host_lock("", 1.0).holder() is not None
