"""The fake provider: GPUs, memory and processes staged in a JSON file (tests, demos).

The file is re-read on every scan, so editing it is how a test or a demo makes
"bob is using GPU 2 without a reservation" happen. Format (docs/status.md):

    {"count": 8, "gpus": [
      {"index": 2, "name": "Fake H100", "memory_total_mb": 81559, "memory_used_mb": 1069,
       "processes": [{"pid": 12345, "name": "python3", "user": "bob", "used_memory_mb": 1024,
                      "cmdline": ["vllm", "serve", "mistralai/Mistral-7B-Instruct-v0.1"]}]}]}

GPUs not listed are idle (without a file, all are). `count` defaults to 8 and is never less
than the highest listed index + 1. `memory_used_mb` defaults to the sum of the processes' memory. A GPU with
`"error": "GPU is lost"` reads as a GPU the provider could not read. `utilization_pct`
(0-100) is the GPU's compute utilisation; left out, the GPU reports none (like a GPU
that does not support it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ProviderUnavailable
from ..model import GpuProcess, GpuUsage
from .base import off_loop

DEFAULT_COUNT = 8
DEFAULT_NAME = "Fake GPU"
DEFAULT_TOTAL_MB = 81559
MAX_GPUS = 1024


class FakeProvider:
    """GPUs described by a file (PIDs in it need not exist); without a file, `count` idle
    GPUs (default 8): what `serve --fake N` and `admin --provider fake` try things on."""

    name = "fake"

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 count: int | None = None) -> None:
        self.path = Path(path) if path else None
        self.idle = count or DEFAULT_COUNT  # without a file

    async def count(self) -> int:
        return (await self._read())[0]

    async def scan(self) -> tuple[GpuUsage, ...]:
        return (await self._read())[1]

    async def _read(self) -> tuple[int, tuple[GpuUsage, ...]]:
        if self.path is None:
            return parse_fake({"count": self.idle}, "(none: idle GPUs)")
        return parse_fake(await off_loop(self._load), str(self.path))

    def _load(self) -> Any:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as err:
            raise ProviderUnavailable(
                f"fake GPU file {self.path} cannot be read: {err.strerror or err}") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ProviderUnavailable(f"fake GPU file {self.path} is not valid JSON: {err.msg} "
                                 f"at line {err.lineno} column {err.colno}") from None


def parse_fake(doc: Any, where: str = "fake GPU file") -> tuple[int, tuple[GpuUsage, ...]]:
    """Validate a fake GPU document; returns (count, one GpuUsage per GPU)."""
    check = _Checker(where)
    if not isinstance(doc, dict):
        check.fail("the top level must be an object like {\"gpus\": [...]}")
    listed: dict[int, GpuUsage] = {}
    for n, raw in enumerate(check.typed(doc.get("gpus", []), list, "gpus", "a list")):
        gpu = _gpu(check.at(f"gpus[{n}]"), raw)
        if gpu.index in listed:
            check.fail(f"GPU {gpu.index} is listed twice")
        listed[gpu.index] = gpu
    count = check.number(doc.get("count", DEFAULT_COUNT), "count", minimum=1)
    count = max(count, max(listed, default=-1) + 1)
    if count > MAX_GPUS:
        check.fail(f"count must be at most {MAX_GPUS}")
    idle = {i: GpuUsage(index=i, name=DEFAULT_NAME, memory_total_mb=DEFAULT_TOTAL_MB)
            for i in range(count)}
    return count, tuple(listed.get(i, idle[i]) for i in range(count))


def _gpu(check: _Checker, raw: Any) -> GpuUsage:
    check.typed(raw, dict, "", "an object")
    index = check.number(raw.get("index"), "index", maximum=MAX_GPUS - 1)
    procs = tuple(_process(check.at(f"processes[{n}]"), p) for n, p in enumerate(
        check.typed(raw.get("processes", []), list, "processes", "a list")))
    used = raw.get("memory_used_mb")
    if used is None:
        used = sum(p.used_memory_mb or 0 for p in procs)
    error = raw.get("error")
    return GpuUsage(
        index=index,
        name=check.text(raw.get("name", DEFAULT_NAME), "name"),
        uuid=check.text(raw["uuid"], "uuid") if raw.get("uuid") is not None else None,
        memory_used_mb=check.number(used, "memory_used_mb"),
        memory_total_mb=check.number(raw.get("memory_total_mb", DEFAULT_TOTAL_MB),
                                     "memory_total_mb"),
        processes=procs,
        error=check.text(error, "error") if error is not None else None,
        utilization_pct=None if raw.get("utilization_pct") is None
        else check.number(raw["utilization_pct"], "utilization_pct", maximum=100),
    )


def _process(check: _Checker, raw: Any) -> GpuProcess:
    check.typed(raw, dict, "", "an object")
    cmdline = raw.get("cmdline", [])
    if isinstance(cmdline, str):
        cmdline = cmdline.split()
    check.typed(cmdline, list, "cmdline", "a list of strings")
    cmdline = tuple(check.text(a, "cmdline") for a in cmdline)
    used = raw.get("used_memory_mb")
    default_name = os.path.basename(cmdline[0]) if cmdline else "unknown"
    return GpuProcess(
        pid=check.number(raw.get("pid"), "pid"),
        name=check.text(raw.get("name", default_name), "name"),
        user=check.text(raw.get("user", "unknown"), "user"),
        used_memory_mb=None if used is None else check.number(used, "used_memory_mb"),
        cmdline=cmdline,
    )


class _Checker:
    """Error messages that say which file, which entry and what is allowed."""

    def __init__(self, where: str, path: str = "") -> None:
        self.where = where
        self.path = path

    def at(self, part: str) -> _Checker:
        return _Checker(self.where, f"{self.path}.{part}" if self.path else part)

    def fail(self, what: str):
        place = f" ({self.path})" if self.path else ""
        raise ProviderUnavailable(f"fake GPU file {self.where}{place}: {what}")

    def _name(self, key: str) -> str:
        return key or "entry"

    def typed(self, value: Any, kind: type, key: str, noun: str) -> Any:
        if not isinstance(value, kind):
            self.fail(f"{self._name(key)} must be {noun}, got {value!r}")
        return value

    def number(self, value: Any, key: str, minimum: int = 0,
               maximum: int | None = None) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        if not ok or (maximum is not None and value > maximum):
            limit = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            self.fail(f"{key} must be a whole number {limit}, got {value!r}")
        return value

    def text(self, value: Any, key: str) -> str:
        return self.typed(value, str, key, "a string")
