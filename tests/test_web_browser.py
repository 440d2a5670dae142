"""The page in a real headless Chromium (Debian's `chromium`, driven by Playwright): the
documents' scene, CLI changes within a second, unreserved use within two, a phone's width,
dark mode, and not one console error. Screenshots of each state are kept in the test's
temporary directory. Skipped where no chromium is installed (.ci/run installs it)."""

from __future__ import annotations

import json
import shutil
import time
from contextlib import asynccontextmanager

import anyio
import pytest

from conftest import HOST
from conftest import Cli
from eventtools import running_daemon
from webtools import served

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    async_playwright = None

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)"),
    pytest.mark.skipif(async_playwright is None, reason="playwright is not installed"),
]

BOB = {"index": 2, "name": "Fake H100", "memory_total_mb": 81559, "memory_used_mb": 1069,
       "processes": [{"pid": 12345, "name": "python3", "user": "bob", "used_memory_mb": 1024,
                      "cmdline": ["vllm", "serve", "mistralai/Mistral-7B-Instruct-v0.1"]}]}
CAROL = {"index": 5, "name": "Fake H100", "memory_total_mb": 81559, "memory_used_mb": 4096,
         "processes": [{"pid": 23456, "name": "jupyter", "user": "carol",
                        "used_memory_mb": 4096, "cmdline": ["jupyter", "lab"]}]}


@asynccontextmanager
async def chromium():
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield browser
        finally:
            await browser.close()


def card(gpu: int, status: str) -> str:
    return f'section[data-host="{HOST}"] article[data-gpu="{gpu}"][data-status="{status}"]'


async def test_the_page_follows_the_pool_live(pool, config, env, fake_gpus, tmp_path):
    fake_gpus.write([BOB])
    async with running_daemon(config), served(config) as client, chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        problems = []
        page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
        page.on("pageerror", lambda err: problems.append(str(err)))

        started = time.monotonic()
        await page.goto(str(client.base_url))
        await page.wait_for_selector(card(7, "available"))
        first_render_ms = (time.monotonic() - started) * 1000
        (tmp_path / "first_render_ms.txt").write_text(f"{first_render_ms:.0f}\n")
        # the documents' scene: bob uses GPU 2 without a reservation
        await page.wait_for_selector(card(2, "unreserved"))
        warning = page.locator(f'section[data-host="{HOST}"] .warning')
        assert "GPU 2 by user bob - 1069 MB used" in await warning.inner_text()
        assert await page.locator("#connection").get_attribute("data-state") == "live"
        await page.screenshot(path=tmp_path / "1-scene.png", full_page=True)

        await _cli(env, "reserve", "--gpu-ids", "3", "--duration", "1h", "--note", "from the CLI")
        await page.wait_for_selector(card(3, "reserved"), timeout=1000)
        text = await page.locator(card(3, "reserved")).inner_text()
        assert "from the CLI" in text and "manual" in text
        await page.screenshot(path=tmp_path / "2-reserved.png", full_page=True)

        await _cli(env, "release", "--gpu-ids", "3")
        await page.wait_for_selector(card(3, "available"), timeout=1000)
        await page.screenshot(path=tmp_path / "3-released.png", full_page=True)

        fake_gpus.write([BOB, CAROL])  # carol starts a notebook on GPU 5, unreserved
        await page.wait_for_selector(card(5, "unreserved"), timeout=2000)
        assert "GPU 5 by user carol - 4096 MB used" in await warning.inner_text()
        await page.screenshot(path=tmp_path / "4-unreserved.png", full_page=True)

        await page.set_viewport_size({"width": 390, "height": 844})  # a phone
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        await page.screenshot(path=tmp_path / "5-phone.png", full_page=True)

        await page.emulate_media(color_scheme="dark")
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert sum(json.loads(background[background.index("("):].replace("(", "[")
                              .replace(")", "]"))) < 3 * 64, background
        await page.screenshot(path=tmp_path / "6-dark.png", full_page=True)

        assert problems == []


async def test_the_page_shows_the_report(pool, config, me, tmp_path):
    from canhazgpu.core import Request
    await pool.allocate(Request(ids=(1,)), me)
    async with served(config) as client, chromium() as browser:
        page = await browser.new_page()
        problems = []
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        await page.goto(str(client.base_url))
        row = page.locator("#report tbody tr")
        await row.first.wait_for()
        assert me.user in await row.first.inner_text()
        await page.select_option("#report-days", "30")
        await page.wait_for_function("document.querySelector('#report tbody tr') !== null")
        await page.screenshot(path=tmp_path / "report.png", full_page=True)
        assert problems == []


async def _cli(env, *args: str) -> None:
    proc = await anyio.run_process(Cli.argv(*args), env=env, check=False)
    assert proc.returncode == 0, proc.stderr.decode()


async def test_the_page_says_when_redis_is_away_and_recovers(env, tmp_path):
    from dataclasses import replace

    from canhazgpu.config import load
    from canhazgpu.core import Core
    from canhazgpu.embedded import RedisServer
    server = RedisServer(tmp_path / "own-redis", persist=True).start()
    config = replace(load(env=env), redis_url=server.url)
    core = Core(config)
    try:
        await core.setup_pool(2, "fake", force=False)
        async with served(config) as client, chromium() as browser:
            page = await browser.new_page()
            problems = []
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            await page.goto(str(client.base_url))
            await page.wait_for_selector(card(1, "available"))
            server.kill()
            error = page.locator(f'section[data-host="{HOST}"] .host-error')
            await error.wait_for(timeout=5000)
            assert "cannot reach Redis" in await error.inner_text()
            assert await page.locator("#connection").get_attribute("data-state") == "degraded"
            assert await page.locator(card(1, "available")).count() == 1  # the last known
            await page.screenshot(path=tmp_path / "redis-away.png", full_page=True)
            await anyio.to_thread.run_sync(server.start)
            await error.wait_for(state="detached", timeout=15000)
            await page.wait_for_function(
                "document.querySelector('#connection').dataset.state === 'live'")
            assert problems == []
    finally:
        await core.aclose()
        server.stop()


async def test_the_page_lists_jobs_as_it_lists_reservations(pool, config, env, tmp_path):
    """Issue 19: a running job's GPU shows TYPE `job NAME`, a queued job is a queue row of
    type job, and the activity log says what each job did."""
    from canhazgpu.jobs.files import JobDir, jobs_root
    jobs = JobDir(jobs_root(config))
    try:
        async with running_daemon(config), served(config) as client, chromium() as browser:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            problems = []
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda err: problems.append(str(err)))
            await page.goto(str(client.base_url))
            await page.wait_for_selector(card(7, "available"))
            await _cli(env, "submit", "--gpu-ids", "3", "--name", "sweep-a", "--", "sleep", "600")
            await page.wait_for_selector(card(3, "reserved"), timeout=15000)
            assert "job sweep-a" in await page.locator(card(3, "reserved")).inner_text()
            await _cli(env, "submit", "--gpus", "8", "--name", "big", "--", "true")
            row = page.locator(f'#queue-{HOST} tbody tr')
            await row.first.wait_for(timeout=15000)
            assert "job" in await row.first.locator('td[data-label="Type"]').inner_text()
            activity = page.locator("#activity")
            await activity.locator("li", has_text="(sweep-a) of ").first.wait_for(timeout=15000)
            text = await activity.inner_text()
            assert "(sweep-a) submitted by" in text and "started on GPU 3" in text, text
            await page.screenshot(path=tmp_path / "jobs.png", full_page=True)
            await _cli(env, "cancel", *(str(j.id) for j in jobs.all()))
            await activity.locator("li", has_text="(sweep-a) of ").filter(
                has_text="cancelled").first.wait_for(timeout=15000)
            assert problems == []
    finally:
        import os
        import signal
        for pid, signum in [(jobs.agent_pid(), signal.SIGKILL)] + [
                (j.doc.get("runner_pid"), signal.SIGTERM) for j in jobs.all()
                if j.runner_alive()]:
            if pid:
                os.kill(int(pid), signum)  # a runner stops its command and gives the GPU back
