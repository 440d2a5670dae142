"""The web server (issue 12): the status endpoint's time, event delivery to 100 SSE clients,
and the page's first render in Chromium.

Starts its own private Redis, a pool of 8 fake GPUs and `canhazgpu web --listen
127.0.0.1:0` as a child process (so the server has its own event loop and process; the
clients below share this one). No daemon: the server scans the local host itself.
- status: GET /api/v1/hosts/bench/status over one keep-alive connection (the standard
  library's http.client) on loopback; each request's wall time at the client, so the
  server's time plus loopback and a minimal client;
- SSE: CLIENTS httpx streams on /api/v1/events, connected before anything changes; the
  benchmark reserves and releases a GPU through the core ROUNDS times (one change at a time,
  the next once every client has the last one); for each event and client, the time from
  its publication (the event's time_ms: Redis TIME inside the script, ms resolution, same
  machine clock) to the moment the client has parsed it (time.time()). The clients' own
  parsing (100 streams in one Python process) is included;
- first render: headless Chromium (Debian's, through Playwright), a fresh browser context
  per load (no cache); time from navigation start until GPU 7's card is shown as available
  (the browser test's selector), as performance.now() in the page (its origin is the
  navigation start) and as wall time around page.goto at the driver; median of LOADS.

Run: .venv/bin/python benchmarks/bench_web.py          (full run, well under 90 s)
     .venv/bin/python benchmarks/bench_web.py --quick  (small counts, a check that it works)
Targets: status p50/p99 <= 10 ms; SSE p99 <= 100 ms; first render <= 500 ms.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx

from _common import bench_env, machine, median, percentile, wait_for_line
from canhazgpu.config import load
from canhazgpu.core import Core, Request
from canhazgpu.identity import current

QUICK = "--quick" in sys.argv[1:] or os.environ.get("BENCH_QUICK") == "1"
REQUESTS = 30 if QUICK else 300
CLIENTS = 10 if QUICK else 100
ROUNDS = 3 if QUICK else 30
LOADS = 2 if QUICK else 5
HOST = "bench"
CARD = f'section[data-host="{HOST}"] article[data-gpu="7"][data-status="available"]'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def web_server(env: dict):
    """`canhazgpu web --listen 127.0.0.1:0` as its own process; yields its port."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "web.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "canhazgpu", "web", "--listen", "127.0.0.1:0"],
                env=env, stdout=subprocess.DEVNULL, stderr=out)
        try:
            wait_for_line(log, "serving http://")
            yield int(re.search(r"serving http://[^ ]+:(\d+)/", log.read_text()).group(1))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)


def status_times(port: int) -> list[float]:
    """Wall time in ms of each GET /api/v1/hosts/HOST/status on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    path = f"/api/v1/hosts/{HOST}/status"
    out = []
    try:
        for k in range(REQUESTS + 20):  # the first 20 warm up
            t0 = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - t0
            if response.status != 200:
                raise SystemExit(f"status endpoint: {response.status} {body[:200]!r}")
            if k >= 20:
                out.append(elapsed * 1e3)
    finally:
        conn.close()
    return out


class Delivery:
    """What the SSE clients received: per (type, rid), how many clients and when."""

    def __init__(self) -> None:
        self.connected = 0
        self.all_connected = anyio.Event()
        self.count: dict = defaultdict(int)
        self.everyone: dict = defaultdict(anyio.Event)
        self.delays: list[float] = []

    def arrived(self, doc: dict) -> None:
        self.delays.append(time.time() * 1e3 - doc["time_ms"])
        key = (doc["type"], doc.get("rid"))
        self.count[key] += 1
        if self.count[key] == CLIENTS:
            self.everyone[key].set()


async def sse_client(client: httpx.AsyncClient, delivery: Delivery) -> None:
    async with client.stream("GET", "/api/v1/events") as response:
        if response.status_code != 200:
            raise SystemExit(f"event stream: {response.status_code}")
        event = None
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "event":
                delivery.arrived(json.loads(line[5:]))
            elif line.startswith("data:") and event == "hosts":
                delivery.connected += 1
                if delivery.connected == CLIENTS:
                    delivery.all_connected.set()
            elif line == "":
                event = None


async def sse_delays(port: int) -> list[float]:
    delivery = Delivery()
    core = Core(load())
    me = current()
    limits = httpx.Limits(max_connections=CLIENTS + 10, max_keepalive_connections=0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                     timeout=httpx.Timeout(30, read=None)) as client, \
                anyio.create_task_group() as tg:
            for _ in range(CLIENTS):
                tg.start_soon(sse_client, client, delivery)
            with anyio.fail_after(30):
                await delivery.all_connected.wait()
            for _ in range(ROUNDS):
                res = await core.allocate(Request(count=1, duration_s=600), me)
                with anyio.fail_after(10):
                    await delivery.everyone[("reserved", res.rid)].wait()
                await core.end(res.rid, me)
                with anyio.fail_after(10):
                    await delivery.everyone[("released", res.rid)].wait()
            tg.cancel_scope.cancel()
    finally:
        await core.aclose()
    return delivery.delays


async def first_renders(port: int) -> tuple[list[float], list[float]] | str:
    """(in-page ms since navigation start, driver wall ms) per load, or why it was skipped."""
    if CHROMIUM is None:
        return "no chromium on PATH (apt-get install chromium)"
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        return "playwright is not installed"
    in_page, at_driver = [], []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking"])
        try:
            for k in range(LOADS + 1):  # the first load warms the browser process up
                context = await browser.new_context(viewport={"width": 1280, "height": 900})
                page = await context.new_page()
                t0 = time.perf_counter()
                await page.goto(f"http://127.0.0.1:{port}/", wait_until="commit")
                shown = await page.wait_for_function(
                    f"() => document.querySelector('{CARD}') ? performance.now() : null",
                    polling="raf", timeout=10000)
                wall_ms = (time.perf_counter() - t0) * 1e3
                if k:
                    in_page.append(await shown.json_value())
                    at_driver.append(wall_ms)
                await context.close()
        finally:
            await browser.close()
    return in_page, at_driver


def main() -> None:
    started = time.monotonic()
    with bench_env(gpus=8) as (env, _):
        env = {**os.environ, **env}
        subprocess.run([sys.executable, "-m", "canhazgpu", "admin", "--gpus", "8"],
                       check=True, capture_output=True, env=env)
        with web_server(env) as port:
            status = status_times(port)
            delays = anyio.run(sse_delays, port)
            renders = anyio.run(first_renders, port)
    print(f"machine: {machine()}{' (--quick: small counts)' if QUICK else ''}")
    print("| measure | samples | p50 | p99 | max | target |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| GET /api/v1/hosts/{{host}}/status, client wall on loopback | {len(status)} | "
          f"{median(status):.2f} ms | {percentile(status, 99):.2f} ms | {max(status):.2f} ms "
          f"| <= 10 ms |")
    print(f"| event publication -> {CLIENTS} SSE clients ({ROUNDS} reserve+release) | "
          f"{len(delays)} | {median(delays):.1f} ms | {percentile(delays, 99):.1f} ms | "
          f"{max(delays):.1f} ms | p99 <= 100 ms |")
    if isinstance(renders, str):
        print(f"| first render in Chromium | skipped: {renders} | | | | <= 500 ms |")
    else:
        in_page, at_driver = renders
        print(f"| first render in Chromium, navigation start -> GPU cards (in page) | "
              f"{len(in_page)} | {median(in_page):.0f} ms (median) | | {max(in_page):.0f} ms "
              f"| <= 500 ms |")
        print(f"| first render in Chromium, goto -> GPU cards (driver wall) | "
              f"{len(at_driver)} | {median(at_driver):.0f} ms (median) | | "
              f"{max(at_driver):.0f} ms | |")
    print(f"(whole run {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
