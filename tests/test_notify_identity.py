"""Users' own notification rules through the daemon, as the kernel names the caller: uid
65534 (nobody) sees, tests and removes only its own rules, stored under its own uid."""

from __future__ import annotations

import json

import pytest

from canhazgpu.api.doors import Local
from otheruser import NOBODY, needs_root, open_dir  # noqa: F401 (fixture)
from test_api_identity import as_nobody, daemon, nobody_env, raw_as_nobody  # noqa: F401

pytestmark = [pytest.mark.anyio, needs_root]


async def test_each_user_sees_and_changes_only_their_own_rules(daemon, pool,  # noqa: F811
                                                               nobody_env, me):  # noqa: F811
    mine = await Local(pool, None).notify(me, "add", channel="webhook",
                                          url="http://127.0.0.1:9/x", events=None)
    _, out, _ = await as_nobody(nobody_env, "notify", "list", "--json", check=0)
    assert json.loads(out) == []  # root's rule is not nobody's
    await as_nobody(nobody_env, "notify", "add", "terminal", check=0)
    _, out, _ = await as_nobody(nobody_env, "notify", "list", "--json", check=0)
    (theirs,) = json.loads(out)
    assert theirs["channel"] == "terminal" and theirs["id"] != mine[0]["id"]
    reply = await raw_as_nobody(nobody_env, "notify_remove", {"id": mine[0]["id"]})
    assert reply["error"]["type"] == "InvalidRequest"
    code, out, _ = await as_nobody(nobody_env, "notify", "test")
    assert code == 1 and out.startswith(f"{theirs['id']} terminal: FAILED: no terminal of "
                                        f"uid {NOBODY}")
    code, _, err = await as_nobody(nobody_env, "notify", "add", "terminal", "--all-users")
    assert code == 1 and "--all-users is for root or the admin group only" in err
    stored = await pool.store.notify_rules()
    assert {uid: e["user"] for uid, e in stored.items()} == {me.uid: me.user, NOBODY: "nobody"}
    assert [r["id"] for r in await Local(pool, None).notify(me, "list")] == [mine[0]["id"]]
