"""The views across hosts through the daemon (issues 15 and 16): an ordinary user of a
secured host (uid 65534) cannot reach the daemon's private Redis, yet its `hosts`,
`status/queue/report --all-hosts` and `--host a,b` work through the daemon and show what
root's direct reads show (other users' command lines cut to the model); `admin --retire`
through the daemon keeps its admin check."""

from __future__ import annotations

import json

import anyio
import pytest

from conftest import Cli
from eventtools import Lines, reap, stop
from otheruser import needs_root, open_dir  # noqa: F401 (fixture)
from otheruser import nobody_runs as as_nobody

pytestmark = [pytest.mark.anyio, needs_root]
SECRET = "--token=s3cret"


def timeless(doc):
    """A document without its clock readings (two reads are moments apart)."""
    if isinstance(doc, dict):
        return {k: timeless(v) for k, v in doc.items() if not k.endswith(("_ms", "_s", "_hours", "share"))}
    if isinstance(doc, list):
        return [timeless(v) for v in doc]
    return doc


def cut(doc, user: str):
    """Root's document as `user` may see it: other users' command lines cut (no model
    named in them here, so nothing is left)."""
    for host in doc["hosts"]:
        for gpu in host.get("gpus", []):
            for proc in gpu["processes"]:
                if proc["user"] != user:
                    proc["cmdline"] = []
    return doc


async def test_nobody_sees_every_host_through_a_root_daemon_with_a_private_redis(
        cli, env, open_dir):
    gpus = open_dir / "views-gpus.json"
    gpus.write_text(json.dumps({"count": 4, "gpus": [
        {"index": 1, "name": "Fake H100", "memory_total_mb": 81559, "memory_used_mb": 3000,
         "processes": [{"pid": 4242, "name": "python3", "user": "bob", "used_memory_mb": 2900,
                        "cmdline": ["python", "train.py", SECRET]}]}]}))
    gpus.chmod(0o644)
    (open_dir / "views.toml").write_text("")
    (open_dir / "views.toml").chmod(0o644)
    own = {k: v for k, v in env.items() if k != "CANHAZGPU_REDIS_URL"}
    own.update(CANHAZGPU_STATE_DIR=str(open_dir / "views-state"), CANHAZGPU_HOST="alpha",
               CANHAZGPU_API_SOCKET=str(open_dir / "views.sock"),
               CANHAZGPU_CONFIG=str(open_dir / "views.toml"), CANHAZGPU_FAKE_GPUS=str(gpus),
               HOME=str(open_dir))
    direct = {**own, "CANHAZGPU_CLIENT": "direct"}
    daemon = await anyio.open_process([*cli.argv("serve", "--embedded-redis", "--fake", "4")],
                                      env=own)
    try:
        await Lines(daemon.stderr).until(lambda line: "serving host" in line, timeout=30)
        # root, directly on the private Redis: a second host with a reservation and a queue
        root = Cli(direct)
        await root.run("admin", "--gpus", "2", "--provider", "fake", "--host", "beta", check=0)
        await root.run("reserve", "--gpus", "1", "--host", "beta", "--note", "mine", check=0)
        await root.run("reserve", "--gpus", "1", "--note", "here", check=0)  # on alpha
        # nobody: its own Redis is out of reach, the daemon is not
        code, _, err = await as_nobody(direct, "hosts")
        assert code == 1 and err.count("\n") == 1 and "Traceback" not in err

        for args in (("hosts", "--json"), ("status", "--all-hosts", "--json"),
                     ("status", "--host", "beta,alpha", "--json"),
                     ("queue", "--all-hosts", "--json"),
                     ("report", "--all-hosts", "--json")):
            mine = (await root.run(*args, check=0)).stdout
            _, theirs, _ = await as_nobody(own, *args, check=0)
            expected = json.loads(mine)
            if args[0] == "status":
                assert SECRET in mine and SECRET not in theirs
                expected = cut(expected, "nobody")
            assert timeless(json.loads(theirs)) == timeless(expected), args
        doc = json.loads((await root.run("status", "--all-hosts", "--json", check=0)).stdout)
        assert [h["host"] for h in doc["hosts"]] == ["alpha", "beta"]
        assert [h["summary"]["reserved"] for h in doc["hosts"]] == [1, 1]
        _, text, _ = await as_nobody(own, "hosts", check=0)
        assert "alpha" in text and "beta" in text

        # retiring: refused to nobody by the daemon's admin check, done for root through it
        code, _, err = await as_nobody(own, "admin", "--retire", "--host", "beta")
        assert code == 1 and "may retire a host; you are nobody" in err
        code, _, err = await as_nobody(own, "admin", "--retire")  # alpha: its daemon serves
        assert code == 1 and "may retire a host; you are nobody" in err, err
        via = Cli({**own, "CANHAZGPU_CLIENT": "daemon"})
        serving = await via.run("admin", "--retire")
        assert serving.returncode == 1 and "daemon of host 'alpha' is serving" in serving.stderr
        await via.run("admin", "--retire", "--host", "beta", check=0)
        _, out, _ = await as_nobody(own, "hosts", "--json", check=0)
        assert [h["host"] for h in json.loads(out)["hosts"]] == ["alpha"]
    finally:
        await stop(daemon)
        await reap(daemon)
