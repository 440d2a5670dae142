"""AMD GPUs through the `amd-smi` command line tool (best effort).

Each scan runs `amd-smi metric --mem-usage --json` and `amd-smi process --json`; the GPU
list (`amd-smi list --json`) and names (`amd-smi static --asic --json`) are read once.
amd-smi's JSON differs between releases: a top-level list (ROCm 6) or {"gpu_data": [...]}
(ROCm 7); numbers bare or as {"value": N, "unit": "MB"}; "N/A" where a value is missing;
"process_info": "No running processes detected" for an idle GPU. The parsers accept all
of these. Owners and command lines come from the OS (procinfo), as for NVIDIA.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import anyio

from ..errors import NeedsEventLoop, ProviderUnavailable, without_loop
from ..model import GpuUsage
from . import procinfo

EXECUTABLE = "amd-smi"
_TO_MIB = {"b": 1 / 1024 / 1024, "kb": 1 / 1024, "kib": 1 / 1024, "mb": 1, "mib": 1,
           "gb": 1024, "gib": 1024}
_NUMBER_UNIT = re.compile(r"^\s*([0-9.]+)\s*([A-Za-z]*)\s*$")
_AmdProcess = tuple[int, str, int | None]  # pid, name, VRAM MiB


def available(executable: str = EXECUTABLE) -> bool:
    return shutil.which(executable) is not None


class AmdProvider:
    name = "amd"

    def __init__(self, executable: str = EXECUTABLE) -> None:
        self.executable = executable
        self._identity: tuple[dict[int, str | None], dict[int, str]] | None = None

    async def count(self) -> int:
        uuids, _ = await self.identity()
        return len(uuids)

    async def identity(self) -> tuple[dict[int, str | None], dict[int, str]]:
        """{index: uuid} and {index: name}, read once."""
        if self._identity is None:
            listed = parse_list(await self.run_json("list"))
            try:
                names = parse_names(await self.run_json("static", "--asic"))
            except ProviderUnavailable:
                names = {}  # names are decoration; the GPU list is what matters
            self._identity = (listed, names)
        return self._identity

    async def scan(self) -> tuple[GpuUsage, ...]:
        if without_loop():
            raise NeedsEventLoop  # amd-smi runs as child processes, awaited at once
        uuids, names = await self.identity()
        docs: dict[str, Any] = {}

        async def fetch(key: str, *args: str) -> None:
            docs[key] = await self.run_json(*args)

        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch, "metric", "metric", "--mem-usage", "--usage")
            tg.start_soon(fetch, "process", "process")
        memory = parse_memory(docs["metric"])
        procs = parse_processes(docs["process"])
        facts = await anyio.to_thread.run_sync(
            procinfo.describe_all, [p[0] for found in procs.values() for p in found])
        return build_usages(len(uuids), uuids, names, memory, procs, facts,
                            parse_utilization(docs["metric"]))

    async def run_json(self, *args: str) -> Any:
        command = [self.executable, *args, "--json"]
        shown = " ".join(command)
        try:
            result = await anyio.run_process(command, check=False, stderr=subprocess.PIPE)
        except OSError as err:
            raise ProviderUnavailable(f"cannot run {shown}: {err.strerror or err} "
                                      "(is ROCm installed and amd-smi on PATH?)") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).decode(errors="replace").strip()
            detail = detail.splitlines()[-1] if detail else f"exit code {result.returncode}"
            raise ProviderUnavailable(f"{shown} failed: {detail}")
        return decode(result.stdout, shown)


def decode(output: bytes | str, source: str = EXECUTABLE) -> Any:
    """JSON from amd-smi's stdout, skipping any warning lines printed before it."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    try:
        return json.loads(text[min(starts):]) if starts else json.loads(text)
    except ValueError:
        raise ProviderUnavailable(f"{source} printed no JSON") from None


def entries(doc: Any) -> list[dict]:
    """The per-GPU objects of any amd-smi JSON document."""
    if isinstance(doc, dict):
        doc = doc.get("gpu_data", [doc] if "gpu" in doc else [])
    return [e for e in doc if isinstance(e, dict) and _int(e.get("gpu")) is not None] \
        if isinstance(doc, list) else []


def parse_list(doc: Any) -> dict[int, str | None]:
    return {_int(e["gpu"]): _str(e.get("uuid")) for e in entries(doc)}


def parse_names(doc: Any) -> dict[int, str]:
    names = {}
    for e in entries(doc):
        asic = e.get("asic") if isinstance(e.get("asic"), dict) else {}
        name = _str(asic.get("market_name")) or _str(asic.get("product_name"))
        if name:
            names[_int(e["gpu"])] = name
    return names


def parse_memory(doc: Any) -> dict[int, tuple[int | None, int | None]]:
    """{index: (used MiB, total MiB)} from `amd-smi metric --mem-usage`; None for "N/A"."""
    memory = {}
    for e in entries(doc):
        usage = e.get("mem_usage") if isinstance(e.get("mem_usage"), dict) else {}
        memory[_int(e["gpu"])] = (mib(usage.get("used_vram"), "MB"),
                                  mib(usage.get("total_vram"), "MB"))
    return memory


def parse_utilization(doc: Any) -> dict[int, int | None]:
    """{index: compute utilisation %} from `amd-smi metric --usage` (gfx_activity)."""
    found = {}
    for e in entries(doc):
        usage = e.get("usage") if isinstance(e.get("usage"), dict) else {}
        value = usage.get("gfx_activity")
        if isinstance(value, dict):
            value = value.get("value")
        pct = _int(value)
        found[_int(e["gpu"])] = None if pct is None else max(0, min(100, pct))
    return found


def parse_processes(doc: Any) -> dict[int, list[_AmdProcess]]:
    """{index: [(pid, name, VRAM MiB)]} from `amd-smi process`."""
    found: dict[int, list[_AmdProcess]] = {}
    for e in entries(doc):
        rows = found.setdefault(_int(e["gpu"]), [])
        listed = e.get("process_list") if isinstance(e.get("process_list"), list) else []
        for item in listed:
            info = item.get("process_info", item) if isinstance(item, dict) else None
            pid = _int(info.get("pid")) if isinstance(info, dict) else None
            if pid is None:
                continue  # "No running processes detected"
            memory = info.get("memory_usage") if isinstance(info.get("memory_usage"), dict) \
                else {}
            vram = mib(memory.get("vram_mem"), "B")
            if vram is None:
                vram = mib(info.get("mem_usage", info.get("mem")), "B")
            rows.append((pid, _str(info.get("name")) or "", vram))
    return found


def build_usages(count: int, uuids: dict[int, str | None], names: dict[int, str],
                 memory: dict[int, tuple[int | None, int | None]],
                 procs: dict[int, list[_AmdProcess]],
                 facts: dict[int, procinfo.ProcessFacts],
                 utilization: dict[int, int | None] | None = None) -> tuple[GpuUsage, ...]:
    """One GpuUsage per GPU; one whose used memory amd-smi cannot tell is in error."""
    usages = []
    for i in range(count):
        used, total = memory.get(i, (None, None))
        found = tuple(procinfo.gpu_process(pid, vram, facts.get(pid, procinfo.ProcessFacts()),
                                           name=name) for pid, name, vram in procs.get(i, ()))
        usages.append(GpuUsage(
            index=i, name=names.get(i, ""), uuid=uuids.get(i),
            memory_used_mb=used or 0, memory_total_mb=total or 0, processes=found,
            error=None if used is not None else "amd-smi reports no used memory for this GPU",
            utilization_pct=(utilization or {}).get(i),
        ))
    return tuple(usages)


def mib(value: Any, default_unit: str) -> int | None:
    """A memory amount in whole MiB from 123, "123 MB" or {"value": 123, "unit": "MB"}."""
    unit = default_unit
    if isinstance(value, dict):
        unit = _str(value.get("unit")) or default_unit
        value = value.get("value")
    if isinstance(value, str):
        match = _NUMBER_UNIT.match(value)
        if not match:
            return None  # "N/A"
        value, unit = match.group(1), match.group(2) or unit
    try:
        amount = float(value)
    except (TypeError, ValueError):
        return None
    factor = _TO_MIB.get(unit.lower())
    return None if factor is None else int(amount * factor)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() not in ("", "N/A") \
        else None
