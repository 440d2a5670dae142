"""Real receivers a notification test starts: an HTTP server (webhooks, Apprise json://),
an SMTP server (aiosmtpd, Apprise mailto://) and ptys standing for users' terminals. Each
records what it got; tests wait on it with a deadline."""

from __future__ import annotations

import json
import os
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio


class Inbox:
    """What a receiver got, thread-safe, awaited with a deadline."""

    def __init__(self) -> None:
        self.items: list = []
        self.lock = threading.Lock()

    def add(self, item) -> None:
        with self.lock:
            self.items.append(item)

    def snapshot(self) -> list:
        with self.lock:
            return list(self.items)

    async def until(self, predicate=lambda items: bool(items), timeout: float = 5.0) -> list:
        with anyio.fail_after(timeout):
            while not predicate(self.snapshot()):
                await anyio.sleep(0.02)
        return self.snapshot()


@contextmanager
def http_receiver(delay: threading.Event | None = None):
    """An HTTP server on 127.0.0.1: (url base, inbox of (path, JSON body)). With `delay`,
    every request hangs until the event is set (a slow receiver)."""
    inbox = Inbox()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if delay is not None:
                delay.wait(30)
            inbox.add((self.path, json.loads(body or b"null")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", inbox
    finally:
        if delay is not None:
            delay.set()
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def smtp_receiver():
    """An SMTP server (aiosmtpd) on 127.0.0.1: (port, inbox of (recipients, message))."""
    from aiosmtpd.controller import Controller
    inbox = Inbox()

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            inbox.add((envelope.rcpt_tos, envelope.content.decode(errors="replace")))
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, inbox
    finally:
        controller.stop()


class Terminal:
    """A pty standing for a user's login terminal (its slave side owned by `uid`)."""

    def __init__(self, uid: int | None = None) -> None:
        self.master, self.slave = os.openpty()  # the slave held open, as a login shell does
        self.path = os.ttyname(self.slave)
        if uid is not None:
            os.chown(self.path, uid, -1)
        os.chmod(self.path, 0o620)  # mesg y
        os.set_blocking(self.master, False)
        self.text = ""

    def read(self) -> str:
        try:
            while True:
                chunk = os.read(self.master, 65536)
                if not chunk:
                    break
                self.text += chunk.decode(errors="replace")
        except (BlockingIOError, OSError):
            pass
        return self.text

    async def until(self, text: str, timeout: float = 5.0) -> str:
        with anyio.fail_after(timeout):
            while text not in self.read():
                await anyio.sleep(0.02)
        return self.text

    def close(self) -> None:
        os.close(self.slave)
        os.close(self.master)
