"""Reads the web server needs that the core does not offer yet (thin; for the core to adopt).

- `queue_rows`: `canhazgpu queue --json`'s rows from a PoolView (render.queue_json), with
  `eta_s` per row (waitqueue.eta_ms, as `wait` estimates it), so the page's queue and its
  status come from one read;
- `events_since`: Store.events_since, decoded to Event values;
- `daemon_up`: whether a daemon holds the host's lock.
"""

from __future__ import annotations

import json

from ..events import Event
from ..model import PoolView
from ..render import queue_json
from ..store import Store
from ..waitqueue import eta_ms


def queue_rows(view: PoolView) -> list[dict]:
    """Who waits, in order, and `eta_s`: seconds until each should have its GPUs (0: now;
    None: cannot be told)."""
    rows = queue_json(view.now_ms, view.queue)
    for row in rows:
        eta = eta_ms(view, row["id"])
        row["eta_s"] = None if eta is None else max(0.0, (eta - view.now_ms) / 1000)
    return rows


async def events_since(store: Store, seq: int) -> list[Event]:
    """The host's events after `seq`, oldest first, as far back as its stream reaches."""
    found = (Event.decode(json.dumps(doc)) for doc in await store.events_since(seq))
    return [event for event in found if event is not None]


async def daemon_up(store: Store) -> bool:
    """Whether a daemon serves the host now (its lock key lives while it runs)."""
    return await store.host_lock("", 1.0).holder() is not None
