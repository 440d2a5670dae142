"""Property test: random operation sequences against a plain Python model of the pool."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canhazgpu.core import Request
from canhazgpu.errors import GpusUnavailable, NotEnoughGpus, NotHeld, NotOwner

pytestmark = pytest.mark.anyio

SIZE = 4
USERS = ("ann", "ben", "cat")

op = st.one_of(
    st.tuples(st.just("count"), st.sampled_from(USERS), st.integers(1, SIZE)),
    st.tuples(st.just("ids"), st.sampled_from(USERS),
              st.sets(st.integers(0, SIZE - 1), min_size=1, max_size=SIZE)),
    st.tuples(st.just("release_ids"), st.sampled_from(USERS),
              st.sets(st.integers(0, SIZE - 1), min_size=1, max_size=2)),
    st.tuples(st.just("release_mine"), st.sampled_from(USERS), st.just(None)),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=25))
async def test_pool_matches_the_model(core, me, rclient, ops):
    rclient.flushall()
    core._size = None
    await core.setup_pool(SIZE, "fake", force=False)
    owner: dict[int, str] = {}  # the model: GPU -> user
    for kind, user, arg in ops:
        caller = replace(me, user=user)
        free = [i for i in range(SIZE) if i not in owner]
        if kind == "count":
            released = {int(k): int(v.split("|")[0]) for k, v in
                        rclient.hgetall(core.store.key("released")).items()}
            if arg > len(free):
                with pytest.raises(NotEnoughGpus):
                    await core.allocate(Request(count=arg), caller)
                continue
            got = (await core.allocate(Request(count=arg), caller)).gpus
            assert set(got) <= set(free) and len(got) == arg
            # LRU: nothing left free was released longer ago than something chosen
            age = lambda i: (released.get(i, 0), i)  # noqa: E731
            assert max(map(age, got)) <= min((age(i) for i in free if i not in got),
                                             default=(float("inf"), 0))
            owner.update({i: user for i in got})
        elif kind == "ids":
            if any(i in owner for i in arg):
                with pytest.raises(GpusUnavailable):
                    await core.allocate(Request(ids=tuple(sorted(arg))), caller)
                continue
            got = (await core.allocate(Request(ids=tuple(sorted(arg))), caller)).gpus
            assert set(got) == arg
            owner.update({i: user for i in got})
        elif kind == "release_ids":
            ids = tuple(sorted(arg))
            if any(i not in owner for i in ids):
                with pytest.raises(NotHeld):
                    await core.release(caller, ids=ids)
            elif any(owner[i] != user for i in ids):
                with pytest.raises(NotOwner):
                    await core.release(caller, ids=ids)
            else:
                assert sorted(await core.release(caller, ids=ids)) == list(ids)
                for i in ids:
                    del owner[i]
        else:
            mine = sorted(i for i, u in owner.items() if u == user)
            assert sorted(await core.release(caller)) == mine
            for i in mine:
                del owner[i]
        view = await core.view()
        assert {g.gpu: g.hold.user for g in view.gpus if g.hold} == owner
