"""Kept connections (docs/api.md): a client may send its short requests one after another
over one connection ("keep": true). The daemon says when it keeps the connection, closes
it after any other request or a broken one, and ends one left idle; our client keeps one
per caller for its short calls, so a program making many calls pays for one connection."""

from __future__ import annotations

import json

import anyio
import pytest

from canhazgpu.api import protocol
from canhazgpu.api.client import RemoteCore
from canhazgpu.core import Request
from canhazgpu.errors import NotHeld
from eventtools import rest, running_daemon

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request):
    """The daemon runs on uvloop where it is installed (cli/runner.py): served both ways."""
    return "asyncio" if request.param == "asyncio" else ("asyncio", {"use_uvloop": True})


class Lines:
    """The reply lines of one connection, one at a time."""

    def __init__(self, stream) -> None:
        self.stream, self.buf = stream, b""

    async def next(self) -> dict:
        with anyio.fail_after(10):
            while b"\n" not in self.buf:
                self.buf += await self.stream.receive()
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)


def kept(op: str, **args) -> bytes:
    return protocol.dump({"op": op, "args": args, "keep": True})


async def until(condition, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)  # a condition of the daemon's memory: nothing to wait on


async def test_short_requests_follow_one_another_on_a_kept_connection(pool, config):
    async with running_daemon(config), await anyio.connect_unix(config.api_path) as stream:
        lines = Lines(stream)
        for op in ("hello", "pool_size", "view"):
            await stream.send(kept(op))
            doc = await lines.next()
            assert "ok" in doc and doc["keep"] is True, doc
        await stream.send(kept("acquire", request={"count": 2, "duration_s": 60}))
        assert (await lines.next())["ok"]["gpus"] == [0, 1]
        # an error that answers the request keeps the connection too
        await stream.send(kept("release", ids=[5]))
        doc = await lines.next()
        assert doc["error"]["type"] == "NotHeld" and doc["keep"] is True
        # requests sent together are answered in order
        await stream.send(kept("pool_size") + kept("release", ids=[0, 1]))
        assert (await lines.next())["ok"] == 8
        assert (await lines.next())["ok"] == [0, 1]
        # a request without "keep" is the connection's last, as ever
        await stream.send(protocol.dump({"op": "pool_size"}))
        assert await lines.next() == {"v": protocol.VERSION, "ok": 8}
        assert lines.buf == b"" and await rest(stream) == ""


async def test_a_broken_request_or_one_that_lasts_ends_a_kept_connection(pool, config):
    async with running_daemon(config):
        async with await anyio.connect_unix(config.api_path) as stream:
            lines = Lines(stream)
            await stream.send(kept("pool_size"))
            assert (await lines.next())["keep"] is True
            await stream.send(b"not json\n")
            doc = await lines.next()
            assert doc["error"]["type"] == "ProtocolError" and "keep" not in doc
            assert await rest(stream) == ""
        async with await anyio.connect_unix(config.api_path) as stream:
            lines = Lines(stream)
            await stream.send(kept("acquire", request={"count": 1, "duration_s": 60},
                                   wait_s=5))
            while "ok" not in (doc := await lines.next()):
                pass  # queued, enqueued: a wait streams its lines
            assert doc["ok"]["gpus"] == [0] and "keep" not in doc
            assert await rest(stream) == ""
        # without "keep", nothing may follow a request
        async with await anyio.connect_unix(config.api_path) as stream:
            await stream.send(protocol.dump({"op": "pool_size"}) + kept("pool_size"))
            doc = await Lines(stream).next()
            assert "nothing may follow" in doc["error"]["message"]


async def test_a_kept_connection_left_idle_is_ended(pool, config, monkeypatch):
    monkeypatch.setattr(protocol, "KEEP_IDLE_S", 0.4)
    async with running_daemon(config) as daemon, \
            await anyio.connect_unix(config.api_path) as stream:
        await stream.send(kept("pool_size"))
        assert (await Lines(stream).next())["keep"] is True
        assert len(daemon.api.kept) == 1
        assert await rest(stream) == ""  # the daemon closed it: idle for KEEP_IDLE_S
        await until(lambda: not daemon.api.kept)


async def test_our_client_makes_its_calls_over_one_connection(pool, config, me):
    async with running_daemon(config) as daemon:
        remote = RemoteCore(config, str(config.api_path))
        for _ in range(20):
            res = await remote.acquire(Request(count=1, duration_s=60))
            assert await remote.release(ids=res.gpus) == list(res.gpus)
        assert (await remote.view()).gpus and len(daemon.api.kept) == 1
        # its errors are answers: the connection goes on
        with pytest.raises(NotHeld):
            await remote.release(ids=(7,))
        assert len(daemon.api.kept) == 1
        other = RemoteCore(config, str(config.api_path))
        assert await other.pool_size() == 8 and len(daemon.api.kept) == 2
        await other.aclose()
        await until(lambda: len(daemon.api.kept) == 1)
        await remote.aclose()
        await until(lambda: not daemon.api.kept)
        assert await remote.pool_size() == 8  # a new connection after aclose


async def test_a_connection_kept_with_a_daemon_now_gone_is_not_used(pool, config):
    """A restarted daemon closed what its predecessor kept: our client's next call goes
    over a new connection, as if nothing had been kept."""
    remote = RemoteCore(config, str(config.api_path))
    async with running_daemon(config):
        assert await remote.pool_size() == 8
    async with running_daemon(config) as daemon:
        assert await remote.pool_size() == 8 and len(daemon.api.kept) == 1


async def test_connections_kept_on_a_loop_now_closed_are_dropped_quietly(pool, config):
    """A client used from another event loop first (anyio.run in a thread, then closed):
    that loop's connection is not reused here, and dropping it does not fail."""
    async def call(remote):
        return await remote.pool_size()

    async with running_daemon(config) as daemon:
        remote = RemoteCore(config, str(config.api_path))
        assert await anyio.to_thread.run_sync(anyio.run, call, remote) == 8
        assert len(remote.kept.idle) == 1
        assert await remote.pool_size() == 8  # this loop's: a new connection
        assert len(remote.kept.idle) == 1
        await until(lambda: len(daemon.api.kept) == 1)


async def test_a_request_that_arrives_in_pieces_on_a_kept_connection(pool, config):
    async with running_daemon(config), await anyio.connect_unix(config.api_path) as stream:
        lines = Lines(stream)
        await stream.send(kept("pool_size"))
        assert (await lines.next())["ok"] == 8
        request = kept("hello")
        for piece in (request[:5], request[5:20], request[20:]):
            await stream.send(piece)
            await anyio.wait_all_tasks_blocked()  # each piece its own read by the daemon
        assert (await lines.next())["ok"]["uid"] >= 0
        await stream.send(kept("pool_size"))
        assert (await lines.next())["ok"] == 8
