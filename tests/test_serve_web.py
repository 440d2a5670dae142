"""`serve --web ADDR`: the daemon serves the web page and API beside its own work."""

from __future__ import annotations

import json
import re
import signal
import urllib.request

import anyio
import pytest

from eventtools import Lines, reap, stop

pytestmark = pytest.mark.anyio


async def test_serve_with_web_serves_the_page_and_api_until_sigterm(cli, tmp_path):
    proc = await cli.open("serve", "--embedded-redis", "--fake", 4, "--web", "127.0.0.1:0",
                          "--scan-interval", "0.2s",
                          extra_env={"CANHAZGPU_REDIS_URL": "",
                                     "CANHAZGPU_STATE_DIR": str(tmp_path / "state")},
                          stderr=-1)
    try:
        log = Lines(proc.stderr)
        line = await log.until(lambda text: "web page on http://" in text, timeout=60)
        base = re.search(r"(http://\S+)", line).group(1)

        def get(path: str) -> dict:
            with urllib.request.urlopen(base + path.lstrip("/"), timeout=10) as reply:
                return json.loads(reply.read())
        assert (await anyio.to_thread.run_sync(get, "/healthz"))["status"] == "ok"
        (host,) = (await anyio.to_thread.run_sync(get, "/api/v1/hosts"))["hosts"]
        status = await anyio.to_thread.run_sync(get, f"/api/v1/hosts/{host['host']}/status")
        assert status["summary"]["total"] == 4
        assert await stop(proc, signal.SIGTERM) == 0
    finally:
        await reap(proc)


def test_a_bad_web_address_is_a_usage_error(cli):
    proc = cli("serve", "--web", "nowhere:port")
    assert proc.returncode == 2 and "invalid --listen 'nowhere:port'" in proc.stderr
