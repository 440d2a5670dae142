"""The web server's HTTP API, server-sent events and metrics, against the real test Redis,
served by uvicorn on a real socket. (The page in a real browser: test_web_browser.py.)"""

from __future__ import annotations

import json
import socket
import time

import anyio
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from canhazgpu.core import Request
from canhazgpu.web.adapters import events_since
from conftest import HOST
from webtools import gpu_status, is_event, served, sse

pytestmark = pytest.mark.anyio

BOB_ON_GPU_2 = {"index": 2, "name": "Fake H100", "memory_total_mb": 81559,
                "memory_used_mb": 1069,
                "processes": [{"pid": 12345, "name": "python3", "user": "bob",
                               "used_memory_mb": 1024,
                               "cmdline": ["vllm", "serve", "mistralai/Mistral-7B-Instruct-v0.1"]}]}
MOVING = {"time_ms", "scanned_ms", "duration_s", "heartbeat_age_s", "expires_in_s",
          "free_for_s", "waiting_s", "since_ms", "now_ms", "gpu_hours", "total_gpu_hours",
          "percent", "eta_s", "last_seen_s"}


def steady(doc):
    """A document without the values that move with the clock."""
    if isinstance(doc, dict):
        return {k: steady(v) for k, v in doc.items() if k not in MOVING}
    if isinstance(doc, list):
        return [steady(v) for v in doc]
    return doc


def cli_json(cli, *args):
    return json.loads(cli(*args, "--json", check=0).stdout)


# ---------------------------------------------------------------------- the API
async def test_every_document_equals_the_cli_json(pool, config, cli, fake_gpus, me):
    fake_gpus.write([BOB_ON_GPU_2])
    await pool.allocate(Request(ids=(0, 1), note="notebook"), me)
    waiter = pool.new_reservation(Request(count=6), me)
    await pool.enqueue(waiter, Request(count=6))  # 5 free: it waits, holding what it got
    async with served(config) as client:
        status = (await client.get(f"/api/v1/hosts/{HOST}/status")).json()
        # the page is everyone's: bob's command line (often holding tokens) is cut to the
        # model detected in it; root's CLI sees it whole; the rest is the same document
        [proc] = status["gpus"][2]["processes"]
        assert proc["cmdline"] == ["--model", "mistralai/Mistral-7B-Instruct-v0.1"]
        mine = cli_json(cli, "status")
        mine["gpus"][2]["processes"][0]["cmdline"] = proc["cmdline"]
        assert steady(status) == steady(mine)
        assert status["gpus"][2]["status"] == "unreserved" and status["gpus"][2]["users"] == ["bob"]

        queue = (await client.get(f"/api/v1/hosts/{HOST}/queue")).json()
        assert steady(queue) == steady(cli_json(cli, "queue"))
        assert queue[0]["requested"] == 6 and len(queue[0]["granted"]) == 5

        report = (await client.get("/api/v1/report", params={"days": 7, "host": HOST})).json()
        assert steady(report) == steady(cli_json(cli, "report", "--days", "7"))
        everyone = (await client.get("/api/v1/report?days=7")).json()
        assert [steady(h["report"]) for h in everyone["hosts"]] == [steady(report)]
        # and summed by the server, as `report --all-hosts` sums them (not again in JS)
        assert everyone["all"]["hosts"] == [HOST]
        assert steady({k: v for k, v in everyone["all"].items() if k != "hosts"}) == \
            steady(report)

        from canhazgpu.hosts import register
        await register(pool, "admin")  # as `canhazgpu admin` does: `hosts` lists it
        hosts = (await client.get("/api/v1/hosts")).json()
        assert steady(hosts) == steady(cli_json(cli, "hosts"))  # the same document
        [entry] = hosts["hosts"]
        assert entry["host"] == HOST and entry["error"] is None and entry["version"]
        assert entry["gpus"] == status["summary"] and entry["queue"] == 1
        assert entry["daemon"] == "none"  # registered by admin, no daemon

        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json()["hosts"] == {HOST: "ok"}


async def test_no_request_changes_state(pool, config, rclient, me, fake_gpus):
    fake_gpus.write([BOB_ON_GPU_2])
    await pool.allocate(Request(ids=(3,)), me)

    def everything():
        return {k: rclient.dump(k) for k in sorted(rclient.keys("*"))}

    before = everything()
    async with served(config) as client:
        paths = ["/", "/static/app.js", "/healthz", "/metrics", "/api/v1/hosts",
                 f"/api/v1/hosts/{HOST}/status", f"/api/v1/hosts/{HOST}/queue",
                 "/api/v1/report?days=1"]
        assert (await client.head("/api/v1/events")).status_code == 200
        for path in paths:
            for method in ("GET", "HEAD"):
                assert (await client.request(method, path)).status_code == 200, (method, path)
        for path in paths + ["/api/v1/events"]:
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                reply = await client.request(method, path, content=b'{"gpus": 1}')
                assert reply.status_code == 405, (method, path)
                assert "read-only" in reply.json()["error"]
    assert everything() == before


async def test_bad_requests_get_a_json_4xx_and_the_server_stays_up(pool, config):
    async with served(config) as client:
        cases = {
            "/api/v1/hosts/nope/status": (404, "unknown host 'nope'"),
            "/api/v1/hosts/nope/queue": (404, "unknown host 'nope'"),
            "/api/v1/report?days=abc": (400, "invalid days 'abc'"),
            "/api/v1/report?days=0": (400, "invalid days '0'"),
            "/api/v1/report?days=99999": (400, "from 1 to 3660"),
            "/api/v1/report?host=nope": (404, "unknown host"),
            "/api/v1/events?host=nope": (404, "unknown host"),
            "/api/v1/events?view=2": (400, "invalid view"),
            "/api/v1/nothing": (404, "no such page"),
            "/static/../../etc/passwd": (404, "no such page"),
            "/static/secret.py": (404, "no such page"),
        }
        for path, (code, text) in cases.items():
            reply = await client.get(path)
            assert reply.status_code == code, path
            assert reply.headers["content-type"] == "application/json"
            assert text in reply.json()["error"], (path, reply.json())
        reply = await client.get("/healthz", headers={"X-Big": "a" * 20_000})
        assert reply.status_code == 431 and "headers too large" in reply.json()["error"]
        reply = await client.get("/api/v1/hosts?" + "x" * 10_000)
        assert reply.status_code == 414 and "URL too long" in reply.json()["error"]
        reply = await client.get("/api/v1/events", headers={"Last-Event-ID": "x:y:z"})
        assert reply.status_code == 400 and "invalid Last-Event-ID" in reply.json()["error"]

        address = client.base_url.host, client.base_url.port
        huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
        for request, reply in ((huge, b"HTTP/1.1 4"), (b"NONSENSE\r\n\r\n", b"HTTP/1.1 400")):
            got = await anyio.to_thread.run_sync(_raw, address, request)
            assert got.startswith(reply) or got == b"", got  # a 4xx, or a closed connection
        assert (await client.get("/healthz")).status_code == 200


def _raw(address, request: bytes) -> bytes:
    """Send raw bytes; the reply's start (b'' when the server just closed the connection)."""
    with socket.create_connection(address, timeout=5) as sock:
        try:
            if request:
                sock.sendall(request)
            return sock.recv(100)
        except ConnectionResetError:
            return b""


async def test_a_client_too_slow_with_its_headers_is_disconnected(pool, config, monkeypatch):
    from canhazgpu.web import server
    monkeypatch.setattr(server, "HEADERS_TIMEOUT_S", 0.5)
    async with served(config) as client:
        address = client.base_url.host, client.base_url.port
        for start in (b"", b"GET / HTTP/1.1\r\nHost: x\r\n"):  # nothing; half the headers
            with anyio.fail_after(5):
                assert await anyio.to_thread.run_sync(_raw, address, start) == b""
        assert (await client.get("/healthz")).status_code == 200


async def test_the_page_and_its_assets(pool, config):
    async with served(config) as client:
        page = await client.get("/")
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ("/static/app.js", "/static/style.css"):
            assert asset in page.text
            assert (await client.get(asset)).status_code == 200


# ---------------------------------------------------------------------- live
async def test_a_reservation_reaches_a_listener_within_a_second(pool, config, me):
    async with served(config) as client, sse(client) as stream:
        hello = await stream.next()
        assert hello["event"] == "hosts" and hello["data"] == {"hosts": [HOST]}
        first = await stream.until(lambda m: m["event"] == "state")
        assert gpu_status(first, 4) == "available"
        started = time.monotonic()
        res = await pool.allocate(Request(ids=(4,)), me)
        event = await stream.until(is_event("reserved", rid=res.rid), timeout=1)
        state = await stream.until(lambda m: gpu_status(m, 4) == "reserved", timeout=1)
        assert time.monotonic() - started < 1.0
        assert event["id"] == f"{HOST}:{event['data']['seq']}" == state["id"]
        assert state["data"]["status"]["gpus"][4]["reservation"]["user"] == me.user
        await pool.release(me, ids=(4,))
        await stream.until(lambda m: gpu_status(m, 4) == "available", timeout=1)


async def test_a_queue_is_pushed_with_its_state(pool, config, me):
    await pool.allocate(Request(count=8), me)
    async with served(config) as client, sse(client) as stream:
        await stream.until(lambda m: m["event"] == "state")
        waiter = pool.new_reservation(Request(count=2, note="big job"), me)
        await pool.enqueue(waiter, Request(count=2, note="big job"))
        state = await stream.until(lambda m: m["event"] == "state" and m["data"]["queue"])
        [row] = state["data"]["queue"]
        assert (row["position"], row["id"], row["requested"], row["granted"], row["note"]) == \
            (1, waiter.rid, 2, [], "big job")


async def test_recent_events_are_sent_first_without_a_position(pool, config, me):
    """The page opens with ?recent=20: the last events of the host, oldest first, then live
    ones, each once (issue 17: "nothing has happened" although the stream kept them)."""
    done = [await pool.allocate(Request(ids=(g,)), me) for g in range(3)]
    if not await events_since(pool.store, 0):
        pytest.skip("the scripts do not write the host's event stream yet")
    async with served(config) as client:
        reply = await client.get("/api/v1/events?recent=x")
        assert reply.status_code == 400 and "invalid recent 'x'" in reply.json()["error"]
        async with sse(client, "/api/v1/events?recent=2") as stream:
            got = [await stream.until(lambda m: m["event"] == "event") for _ in range(2)]
            assert [m["data"]["rid"] for m in got] == [r.rid for r in done[1:]]
            res = await pool.allocate(Request(ids=(5,)), me)
            live = await stream.until(lambda m: m["event"] == "event")
            assert live["data"]["rid"] == res.rid
            assert live["data"]["seq"] == got[-1]["data"]["seq"] + 1


async def test_last_event_id_from_an_older_redis_says_resync(pool, config, me):
    """A client whose position is past the host's counter (Redis lost its data) is told
    to re-read, and then gets every new event."""
    async with served(config) as client:
        async with sse(client, headers={"Last-Event-ID": f"{HOST}:999999"}) as stream:
            await stream.until(lambda m: m["event"] == "resync" and m["data"] == {"host": HOST})
            res = await pool.allocate(Request(ids=(1,)), me)
            await stream.until(is_event("reserved", rid=res.rid))


async def test_last_event_id_replays_exactly_the_missed_events(pool, config, me):
    await pool.allocate(Request(ids=(7,)), me)
    if not await events_since(pool.store, 0):
        pytest.skip("the scripts do not write the host's event stream yet")
    async with served(config) as client:
        async with sse(client, "/api/v1/events") as stream:
            await pool.allocate(Request(ids=(0,)), me)
            last = await stream.until(is_event("reserved"))
        one, two = (await pool.allocate(Request(ids=(1,)), me),
                    await pool.allocate(Request(ids=(2,)), me))
        await pool.release(me, ids=(1,))
        missed = [("reserved", one.rid), ("reserved", two.rid), ("released", one.rid)]
        # the browser's way (the header), and the query parameter for tools without one
        for headers, path in (({"Last-Event-ID": last["id"]}, "/api/v1/events"),
                              ({}, f"/api/v1/events?last_event_id={last['id']}")):
            async with sse(client, path, headers) as stream:
                got = [await stream.until(lambda m: m["event"] in ("event", "resync"))
                       for _ in missed]
                assert [(m["event"], m["data"]["type"], m["data"]["rid"]) for m in got] == \
                    [("event", *e) for e in missed]
                first = last["data"]["seq"] + 1
                assert [m["data"]["seq"] for m in got] == list(range(first, first + len(got)))
                res = await pool.allocate(Request(ids=(5,)), me)  # then live, no repeats
                live = await stream.until(lambda m: m["event"] == "event")
                assert (live["data"]["rid"], live["data"]["seq"]) == (res.rid, first + len(got))
                await pool.release(me, ids=(5,))
                missed += [("reserved", res.rid), ("released", res.rid)]


async def test_each_host_is_followed(pool, config, me, redis_url):
    """--hosts: only the named hosts; a host without a pool shows its error, not a crash."""
    async with served(config, hosts=(HOST, "elsewhere")) as client:
        hosts = (await client.get("/api/v1/hosts")).json()["hosts"]
        assert [h["host"] for h in hosts] == [HOST, "elsewhere"]
        assert hosts[0]["error"] is None and hosts[0]["gpus"]["total"] == 8
        assert "no GPU pool" in hosts[1]["error"] and hosts[1]["gpus"] is None
        reply = await client.get("/api/v1/hosts/elsewhere/status")
        assert reply.status_code == 404 and "no GPU pool" in reply.json()["error"]
        async with sse(client, f"/api/v1/events?view=1&host={HOST}") as stream:
            assert (await stream.next())["data"] == {"hosts": [HOST]}
            res = await pool.allocate(Request(ids=(6,)), me)
            await stream.until(is_event("reserved", rid=res.rid))


# ---------------------------------------------------------------------- metrics
def scrape(text: str) -> dict:
    """{(name, (label pairs...)): value} of every sample."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_parse_and_match_status(pool, config, me, fake_gpus, cli):
    fake_gpus.write([BOB_ON_GPU_2])
    await pool.allocate(Request(ids=(0, 1)), me)
    await pool.allocate(Request(ids=(3,), kind="run"), me)
    await pool.allocate(Request(count=4), me)  # the rest of what is free (GPU 2 is bob's)
    async with served(config) as client, sse(client) as stream:
        await stream.until(lambda m: m["event"] == "state")
        waiter = pool.new_reservation(Request(count=1), me)
        await pool.enqueue(waiter, Request(count=1))
        await stream.until(is_event("queued"))
        status = cli_json(cli, "status")
        samples = scrape((await client.get("/metrics")).text)
        host = ("host", HOST)
        for state in ("available", "reserved", "unreserved", "error"):
            assert samples[("canhazgpu_gpus", (host, ("state", state)))] == \
                status["summary"][state]
        assert samples[("canhazgpu_reserved_gpus", (host, ("kind", "manual"),
                                                    ("user", me.user)))] == 6
        assert samples[("canhazgpu_reservations", (host, ("kind", "manual"),
                                                   ("user", me.user)))] == 2
        assert samples[("canhazgpu_reserved_gpus", (host, ("kind", "run"),
                                                    ("user", me.user)))] == 1
        assert samples[("canhazgpu_unreserved_gpu_memory_used_bytes",
                        (("gpu", "2"), host, ("users", "bob")))] == 1069 * 2**20
        assert samples[("canhazgpu_gpu_memory_total_bytes", (("gpu", "2"), host))] == \
            81559 * 2**20
        assert samples[("canhazgpu_queue_length", (host,))] == 1
        assert samples[("canhazgpu_queue_oldest_wait_seconds", (host,))] >= 0
        assert samples[("canhazgpu_up", (host,))] == 1
        assert samples[("canhazgpu_daemon_up", (host,))] == 0
        assert samples[("canhazgpu_web_sse_clients", ())] == 1

        await pool.release(me, ids=(0, 1))  # the waiter gets one of them
        await stream.until(is_event("granted", rid=waiter.rid, complete=True))
        samples = scrape((await client.get("/metrics")).text)
        assert samples[("canhazgpu_reservations_ended_total", (host, ("reason", "released")))] == 1
        assert samples[("canhazgpu_events_total", (host, ("type", "granted")))] == 1
        assert samples[("canhazgpu_queue_wait_seconds_count", (host,))] == 1
        assert samples[("canhazgpu_queue_length", (host,))] == 0


# ---------------------------------------------------------------------- Redis away
async def test_redis_going_away_is_shown_and_recovered_from(tmp_path, env, me):
    from dataclasses import replace

    from canhazgpu.config import load
    from canhazgpu.core import Core
    from canhazgpu.embedded import RedisServer
    server = RedisServer(tmp_path / "own-redis", persist=True).start()  # AOF: the pool stays
    config = replace(load(env=env), redis_url=server.url)
    core = Core(config)
    try:
        await core.setup_pool(4, "fake", force=False)
        async with served(config) as client, sse(client) as stream:
            await stream.until(lambda m: gpu_status(m, 0) == "available")
            server.kill()
            down = await stream.until(lambda m: m["event"] == "state" and m["data"]["error"])
            assert "cannot reach Redis" in down["data"]["error"]
            assert down["data"]["status"] is not None  # the last known state stays on show
            reply = await client.get(f"/api/v1/hosts/{HOST}/status")
            assert reply.status_code == 503 and "cannot reach Redis" in reply.json()["error"]
            health = await client.get("/healthz")
            assert health.status_code == 200 and "cannot reach Redis" in health.json()["hosts"][HOST]
            assert (await client.get("/metrics")).status_code == 200

            await anyio.to_thread.run_sync(server.start)
            await stream.until(lambda m: m["event"] == "state" and not m["data"]["error"]
                               and m["data"]["status"], timeout=15)
            res = await core.allocate(Request(ids=(2,)), me)
            await stream.until(lambda m: gpu_status(m, 2) == "reserved")
            assert (await client.get(f"/api/v1/hosts/{HOST}/status")).json()["gpus"][2][
                "reservation"]["id"] == res.rid
    finally:
        await core.aclose()
        server.stop()


async def test_it_starts_with_redis_down(env, tmp_path):
    from dataclasses import replace

    from canhazgpu.config import load
    config = replace(load(env=env), redis_url=f"unix://{tmp_path}/nothing.sock")
    async with served(config) as client:
        reply = await client.get("/api/v1/hosts")  # as `hosts --json`: Redis is needed
        assert reply.status_code == 503 and "cannot reach Redis" in reply.json()["error"]
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/")).status_code == 200


# ---------------------------------------------------------------------- the command
async def _serving(proc) -> str:
    """The base URL the `web` command announces on stderr."""
    from eventtools import Lines
    line = await Lines(proc.stderr).until(lambda text: "serving http://" in text, timeout=30)
    return line.split("serving ", 1)[1].split("/ ", 1)[0]


async def test_the_command_serves_until_sigterm(pool, env):
    import httpx

    from conftest import Cli
    from eventtools import reap, stop
    proc = await anyio.open_process(Cli.argv("web", "--listen", "127.0.0.1:0"), env=env)
    try:
        base = await _serving(proc)
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get(f"/api/v1/hosts/{HOST}/status")).json()["summary"][
                "total"] == 8
        taken = await anyio.run_process(Cli.argv("web", "--listen", base.split("//")[1]),
                                        env=env, check=False)
        assert taken.returncode == 1
        assert taken.stderr.decode().startswith("Error: cannot listen on 127.0.0.1:")
        assert "Address already in use" in taken.stderr.decode()
        assert await stop(proc) == 0
    finally:
        await reap(proc)


def test_bad_options_are_usage_errors(cli):
    for args, text in ((("--listen", "nowhere"), "invalid --listen 'nowhere'"),
                       (("--listen", "1.2.3.4:99999"), "invalid --listen"),
                       (("--hosts", "a:b"), "invalid host name 'a:b'"),
                       (("--demo", "--hosts", "gpu01"), "--demo shows its own hosts")):
        proc = cli("web", *args, check=2)
        assert proc.stderr.startswith(f"Error: ") and text in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.slow
async def test_the_demo_shows_the_documents_scenes(env, no_process_left_behind):
    import httpx

    from conftest import Cli
    from eventtools import reap, stop
    demo_env = {k: v for k, v in env.items() if k != "CANHAZGPU_REDIS_URL"}
    proc = await anyio.open_process(Cli.argv("web", "--demo", "--listen", "127.0.0.1:0"),
                                    env=demo_env)
    try:
        base = await _serving(proc)
        async with httpx.AsyncClient(base_url=base) as client:
            hosts = (await client.get("/api/v1/hosts")).json()["hosts"]
            assert [h["host"] for h in hosts] == ["gpu01", "gpu02"]
            assert all(h["daemon"] and h["error"] is None for h in hosts)
            gpu01 = (await client.get("/api/v1/hosts/gpu01/status")).json()["gpus"]
            assert gpu01[0]["reservation"]["user"] == "bob"
            assert gpu01[0]["model"]["id"] == "microsoft/DialoGPT-large"
            assert gpu01[1]["status"] == "unreserved" and gpu01[1]["users"] == ["alice"]
            assert gpu01[3]["reservation"]["note"] == "notebook"
            gpu02 = (await client.get("/api/v1/hosts/gpu02/status")).json()["gpus"]
            assert gpu02[1]["users"] == ["root", "alice"] and gpu02[4]["status"] == "error"
        assert await stop(proc, __import__("signal").SIGTERM) == 0
        # its private redis-server went with it (issue 17: SIGTERM left it running)
        assert not [cmd for cmd in no_process_left_behind.processes().values()
                    if "canhazgpu-web-demo-" in cmd]
    finally:
        await reap(proc)
