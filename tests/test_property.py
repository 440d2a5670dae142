"""Property test: random sequences of allocations, releases, queue operations (enqueue,
waiter heartbeats, leaving, grants), lease expiry and heartbeats against a plain Python
model of the pool. After every step the model and Redis must agree on who holds which GPU
and on the queue's order.

The model decides how many GPUs each grant or allocation gets and which GPUs it may take;
which of those it does take is read back and checked against LRU order (last release time,
then id), since the release times are Redis's."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from canhazgpu.core import Core, Request
from canhazgpu.errors import GpusUnavailable, NotEnoughGpus, NotHeld, NotOwner
from conftest import lease_expiry

pytestmark = pytest.mark.anyio

SIZE = 3
USERS = ("ann", "ben", "cat")


@dataclass
class Held:
    rid: str
    user: str
    kind: str
    waiting: bool = False  # granted to a waiter still waiting for the rest


@dataclass
class Queued:
    res: object  # the Reservation the waiter queued with (no GPUs)
    req: Request
    state: str = "queued"  # queued | left | granted


@dataclass
class Model:
    holds: dict[int, Held] = field(default_factory=dict)
    queue: list[Queued] = field(default_factory=list)  # in arrival order
    waiters: list[Queued] = field(default_factory=list)  # every waiter ever queued
    reservations: list = field(default_factory=list)  # every granted Reservation
    ended: set[str] = field(default_factory=set)  # ended on purpose: not brought back

    def gpus_of(self, rid: str) -> list[int]:
        return sorted(g for g, h in self.holds.items() if h.rid == rid)

    def claims(self) -> set[int]:
        """GPUs promised to the queue: direct allocations may not take them."""
        out: set[int] = set()
        for w in self.queue:
            if w.req.ids is None:
                return set(range(SIZE))
            out |= set(w.req.ids)
        return out

    def end(self, gpus) -> None:
        """Holds ended on purpose (released, left): a heartbeat will not bring them back."""
        for g in gpus:
            self.ended.add(self.holds.pop(g).rid)

    def status(self, w: Queued):
        """(position, gpus, done) as the queue scripts report it; None once gone."""
        pos = self.queue.index(w) + 1 if w in self.queue else 0
        gpus = self.gpus_of(w.res.rid)
        return None if pos == 0 and not gpus else (pos, gpus, pos == 0)

    def grant(self, actual: dict[int, str], keys: dict, strict: bool = True) -> None:
        """Hand free GPUs to the queue in arrival order, as Redis did: `actual` says which
        GPUs each waiter took. strict=False: the script may not have run a grant at all."""
        claimed: set[int] = set()
        for w in list(self.queue):
            wid = w.res.rid
            mine = set(self.gpus_of(wid))
            need = w.req.size - len(mine)
            allowed = set(w.req.ids) if w.req.ids is not None else set(range(SIZE))
            cands = {g for g in allowed if g not in self.holds and g not in claimed}
            new = {g for g, rid in actual.items() if rid == wid} - mine
            assert new <= cands, (wid, new, cands)
            assert len(new) == min(need, len(cands)) or (not strict and not new), \
                (wid, new, need, cands)
            assert_lru(new, cands, keys)
            for g in new:
                self.holds[g] = Held(wid, w.res.user, w.req.kind, waiting=True)
            if len(new) == need:
                for g in mine | new:
                    self.holds[g].waiting = False
                self.queue.remove(w)
                w.state = "granted"
                self.reservations.append(replace(w.res, gpus=tuple(sorted(mine | new))))
            elif w.req.ids is None:
                return  # a count request can use any GPU: nobody behind it gets one
            else:
                claimed |= allowed


def assert_lru(chosen: set[int], cands: set[int], keys: dict) -> None:
    """Nothing left behind was released longer ago than something chosen (ties by id)."""
    if chosen and cands - chosen:
        assert max(keys[g] for g in chosen) < min(keys[g] for g in cands - chosen), \
            (chosen, cands, keys)


def request(sel, kind: str) -> Request:
    if isinstance(sel, int):
        return Request(count=sel, kind=kind, duration_s=3600)
    return Request(ids=tuple(sorted(sel)), kind=kind, duration_s=3600)


user = st.sampled_from(USERS)
kind = st.sampled_from(("manual", "run"))
selection = st.one_of(st.integers(1, SIZE),
                      st.frozensets(st.integers(0, SIZE - 1), min_size=1, max_size=SIZE))
index = st.integers(0, 50)
allocate = st.tuples(st.just("allocate"), user, selection, kind)
enqueue = st.tuples(st.just("enqueue"), user, selection, kind)
op = st.one_of(  # taking GPUs twice as often as giving them back: a busy pool, a queue
    allocate, allocate, enqueue, enqueue,
    st.tuples(st.just("release_ids"), user,
              st.frozensets(st.integers(0, SIZE - 1), min_size=1, max_size=2)),
    st.tuples(st.just("release_mine"), user),
    st.tuples(st.just("end"), index),
    st.tuples(st.just("heartbeat"), index),
    st.tuples(st.just("expire"), index),
    st.tuples(st.just("queue_heartbeat"), index),
    st.tuples(st.just("leave"), index),
)


class Run:
    """One example: the core, the model, and each operation applied to both."""

    def __init__(self, core: Core, caller) -> None:
        self.core, self.caller, self.m = core, caller, Model()

    async def observe(self):
        """Redis's side: {gpu: rid} of live holds, LRU keys, users, and the queue's order."""
        view = await self.core.view()
        actual = {g.gpu: g.hold.rid for g in view.gpus if g.hold}
        users = {g.gpu: g.hold.user for g in view.gpus if g.hold}
        keys = {g.gpu: (g.last_released_ms or 0, g.gpu) for g in view.gpus}
        return actual, keys, users, [w.wid for w in view.queue]

    async def allocate(self, who, sel, kind):
        req = request(sel, kind)
        try:
            res, err = await self.core.allocate(req, self.caller(who)), None
        except (NotEnoughGpus, GpusUnavailable) as caught:
            res, err = None, caught
        actual, keys, _, _ = await self.observe()
        self.m.grant(actual, keys)  # the script grants the queue before it allocates
        blocked = set(self.m.holds) | self.m.claims()
        free = {g for g in range(SIZE) if g not in blocked}
        if req.ids is not None:
            if set(req.ids) & blocked:
                assert isinstance(err, GpusUnavailable), (req, res)
                return
        elif req.count > len(free):
            assert isinstance(err, NotEnoughGpus), (req, res)
            return
        assert err is None, (req, err, free)
        assert len(res.gpus) == req.size and set(res.gpus) <= free
        if req.ids is None:
            assert_lru(set(res.gpus), free, keys)
        else:
            assert res.gpus == req.ids
        self.m.holds.update({g: Held(res.rid, who, kind) for g in res.gpus})
        self.m.reservations.append(res)

    async def enqueue(self, who, sel, kind):
        req = request(sel, kind)
        w = Queued(self.core.new_reservation(req, self.caller(who)), req)
        status = await self.core.enqueue(w.res, req)
        self.m.queue.append(w)
        self.m.waiters.append(w)
        actual, keys, _, _ = await self.observe()
        self.m.grant(actual, keys)
        assert (status.position, sorted(status.gpus), status.done) == self.m.status(w)

    async def release_ids(self, who, ids):
        ids = tuple(sorted(ids))
        if any(g not in self.m.holds for g in ids):
            with pytest.raises(NotHeld):
                await self.core.release(self.caller(who), ids=ids)
            return
        if any(self.m.holds[g].user != who for g in ids):
            with pytest.raises(NotOwner):
                await self.core.release(self.caller(who), ids=ids)
            return
        assert sorted(await self.core.release(self.caller(who), ids=ids)) == list(ids)
        self.m.end(ids)
        await self.grant()

    async def release_mine(self, who):
        mine = sorted(g for g, h in self.m.holds.items()
                      if h.user == who and h.kind == "manual" and not h.waiting)
        assert sorted(await self.core.release(self.caller(who))) == mine
        self.m.end(mine)
        await self.grant()

    async def end(self, i):
        if self.m.reservations:
            res = self.m.reservations[i % len(self.m.reservations)]
            gpus = self.m.gpus_of(res.rid)
            assert sorted(await self.core.end(res.rid, self.caller(res.user))) == gpus
            self.m.end(gpus)
            await self.grant()

    async def heartbeat(self, i):
        if not self.m.reservations:
            return
        res = self.m.reservations[i % len(self.m.reservations)]
        lost = []
        for g in res.gpus:
            h = self.m.holds.get(g)
            if h is not None and h.rid == res.rid:
                continue  # refreshed
            if h is not None or res.rid in self.m.ended:
                lost.append(g)  # someone else's now, or ended on purpose
            else:  # its lease lapsed and nobody took it: re-established
                self.m.holds[g] = Held(res.rid, res.user, res.kind)
        assert sorted(await self.core.heartbeat(res)) == lost
        await self.grant(strict=False)

    async def expire(self, i):
        """A lease runs out (as when its owner died): the GPU is free at once."""
        if not self.m.holds:
            return
        gpu = sorted(self.m.holds)[i % len(self.m.holds)]
        store = self.core.store
        async with lease_expiry(store, {gpu}) as expired:
            await store.redis.pexpire(store.lease_key(gpu), 1)
            await expired()
        del self.m.holds[gpu]
        await self.grant(strict=False)  # nothing runs a grant: nothing may change

    def waiter(self, i, states):
        some = [w for w in self.m.waiters if w.state in states]
        return some[i % len(some)] if some else None

    async def queue_heartbeat(self, i):
        w = self.waiter(i, ("queued", "left", "granted"))
        if w is not None:
            status = await self.core.queue_heartbeat(w.res.rid)
            await self.grant()
            got = status and (status.position, sorted(status.gpus), status.done)
            assert got == self.m.status(w)

    async def leave(self, i):
        w = self.waiter(i, ("queued", "left"))  # after a grant: tests in test_queue.py
        if w is not None:
            gpus = self.m.gpus_of(w.res.rid)
            assert sorted(await self.core.leave(w.res.rid, "cancelled")) == gpus
            if w in self.m.queue:
                self.m.queue.remove(w)
                w.state = "left"
            self.m.end(gpus)
            await self.grant()

    async def grant(self, strict: bool = True):
        actual, keys, _, _ = await self.observe()
        self.m.grant(actual, keys, strict)

    async def check(self):
        actual, _, users, queue = await self.observe()
        assert actual == {g: h.rid for g, h in self.m.holds.items()}
        assert users == {g: h.user for g, h in self.m.holds.items()}
        assert queue == [w.res.rid for w in self.m.queue]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=10, max_size=40))
@example(ops=[  # the rare paths, every run: a partial grant, a waiter's plain release,
    ("allocate", "ann", 3, "manual"),  # its lapsed hold granted again, leaving with it,
    ("enqueue", "ben", 2, "manual"),  # a heartbeat after a release, and one that
    ("release_ids", "ann", frozenset({0})),  # re-establishes a lapsed lease
    ("release_mine", "ben"),
    ("expire", 0),
    ("queue_heartbeat", 0),
    ("leave", 0),
    ("heartbeat", 0),
    ("allocate", "cat", frozenset({0}), "run"),
    ("expire", 0),
    ("heartbeat", 1),
])
async def test_pool_and_queue_match_the_model(config, caller, rclient, ops):
    rclient.flushall()
    # leases long enough that only the test's own `expire` steps end one
    core = Core(replace(config, queue_lease="10m", run_lease="10m"))
    try:
        await core.setup_pool(SIZE, "fake", force=False)
        run = Run(core, caller)
        for name, *args in ops:
            await getattr(run, name)(*args)
            await run.check()
    finally:
        await core.aclose()
