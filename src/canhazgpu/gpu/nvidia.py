"""NVIDIA GPUs through NVML (nvidia-ml-py).

NVML is blocking C: every call here runs in a worker thread. It is initialised once per
process and shut down at exit. Versions differ between drivers and bindings, so:
- used memory comes from nvmlDeviceGetMemoryInfo_v2 (v1 counts reserved memory as used
  on drivers >= 515) and falls back to v1 where the driver lacks v2;
- processes come from the _v3 calls and fall back to _v2 on drivers older than 510
  (nvidia-ml-py >= 11.510 no longer falls back by itself: its unversioned call raises);
- any field can raise NotSupported (it is then left empty), usedGpuMemory can be None, and
  a GPU that fails (GPU is lost, reset required) becomes a GpuUsage with `error` set.
pynvml is imported lazily so that commands that never scan start fast.
"""

from __future__ import annotations

import atexit
import threading
from dataclasses import replace

from ..errors import ProviderUnavailable
from ..model import GpuUsage
from . import procinfo
from .base import off_loop, to_mib

_COMPUTE = ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2")
_GRAPHICS = ("nvmlDeviceGetGraphicsRunningProcesses_v3",
             "nvmlDeviceGetGraphicsRunningProcesses_v2")
_OTHER_PROVIDERS = "or use another provider (CANHAZGPU_PROVIDER=amd|fake)"


class _State:
    lock = threading.Lock()
    ready = False
    exit_hook = False
    memory_v2: bool | None = None  # None: not tried yet on this driver
    chosen: dict[tuple[str, ...], str] = {}  # newest process call the driver has


def nvml():
    """The pynvml module with NVML initialised (once per process)."""
    try:
        import pynvml
    except ImportError:
        raise ProviderUnavailable(
            f"nvidia-ml-py is not installed: pip install nvidia-ml-py, {_OTHER_PROVIDERS}"
        ) from None
    with _State.lock:
        if not _State.ready:
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as err:
                raise ProviderUnavailable(_init_failure(pynvml, err)) from None
            _State.ready = True
            if not _State.exit_hook:
                atexit.register(shutdown)
                _State.exit_hook = True
    return pynvml


def shutdown() -> None:
    """Release NVML (registered with atexit; harmless when never initialised)."""
    with _State.lock:
        if not _State.ready:
            return
        _State.ready = False
        _State.memory_v2 = None
        _State.chosen = {}
        try:
            import pynvml
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - at exit there is nobody to tell
            pass


def available() -> bool:
    """Whether NVML initialises here (auto-detection)."""
    try:
        nvml()
    except ProviderUnavailable:
        return False
    return True


class NvidiaProvider:
    name = "nvidia"

    async def count(self) -> int:
        return await off_loop(count_sync)

    async def scan(self) -> tuple[GpuUsage, ...]:
        return await off_loop(scan_sync)


def count_sync() -> int:
    nv = nvml()
    try:
        return int(nv.nvmlDeviceGetCount())
    except nv.NVMLError as err:
        raise ProviderUnavailable(f"NVML cannot count the GPUs: {err}") from None


def scan_sync() -> tuple[GpuUsage, ...]:
    """Every GPU's memory and processes, with each process's owner and command line."""
    nv = nvml()
    raw = [read_gpu(nv, index) for index in range(count_sync())]
    facts = procinfo.describe_all(pid for _, procs in raw for pid in procs)
    return tuple(
        replace(usage, processes=tuple(procinfo.gpu_process(pid, mem, facts[pid])
                                       for pid, mem in procs.items()))
        for usage, procs in raw)


def read_gpu(nv, index: int) -> tuple[GpuUsage, dict[int, int | None]]:
    """One GPU's usage and its processes as {pid: used MiB or None}."""
    name, uuid = "", None
    try:
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        name = _text(_optional(nv, nv.nvmlDeviceGetName, handle))
        uuid = _text(_optional(nv, nv.nvmlDeviceGetUUID, handle)) or None
        memory = _optional(nv, _memory_info, nv, handle)
        rates = _optional(nv, nv.nvmlDeviceGetUtilizationRates, handle)
        procs = _processes(nv, handle)
    except nv.NVMLError as err:
        return GpuUsage(index=index, name=name, uuid=uuid, error=str(err)), {}
    return GpuUsage(
        index=index, name=name, uuid=uuid,
        memory_used_mb=to_mib(getattr(memory, "used", None)) or 0,
        memory_total_mb=to_mib(getattr(memory, "total", None)) or 0,
        utilization_pct=_pct(getattr(rates, "gpu", None)),
    ), procs


def _pct(value) -> int | None:
    """A utilisation reading as 0..100; None when the GPU does not tell."""
    try:
        return None if value is None else max(0, min(100, int(value)))
    except (TypeError, ValueError):
        return None


def _memory_info(nv, handle):
    version = getattr(nv, "nvmlMemory_v2", None)
    if version is not None and _State.memory_v2 is not False:
        try:
            memory = nv.nvmlDeviceGetMemoryInfo(handle, version=version)
        except _errors(nv, "NVMLError_FunctionNotFound", "NVMLError_ArgumentVersionMismatch"):
            _State.memory_v2 = False  # driver < 515: v1 is all there is
        else:
            _State.memory_v2 = True
            return memory
    return nv.nvmlDeviceGetMemoryInfo(handle)


def _processes(nv, handle) -> dict[int, int | None]:
    """Compute and graphics processes merged by PID (a process can hold both contexts)."""
    merged: dict[int, int | None] = {}
    for names in (_COMPUTE, _GRAPHICS):
        try:
            found = _newest(nv, names, handle)
        except _errors(nv, "NVMLError_NotSupported", "NVMLError_NoPermission"):
            continue
        for proc in found:
            used = to_mib(getattr(proc, "usedGpuMemory", None))
            pid = int(proc.pid)
            known = merged.get(pid)
            merged[pid] = used if known is None else max(known, used or 0)
    return merged


def _newest(nv, names: tuple[str, ...], handle):
    """Call the newest versioned function the driver has; remember the choice."""
    chosen = _State.chosen.get(names)
    if chosen is not None:
        return getattr(nv, chosen)(handle)
    for name in names:
        call = getattr(nv, name, None)
        if call is None:
            continue  # bindings older than this version
        try:
            result = call(handle)
        except nv.NVMLError_FunctionNotFound:
            continue  # driver older than this version
        _State.chosen[names] = name
        return result
    raise nv.NVMLError(nv.NVML_ERROR_FUNCTION_NOT_FOUND)


def _optional(nv, call, *args):
    try:
        return call(*args)
    except nv.NVMLError_NotSupported:
        return None


def _errors(nv, *names: str) -> tuple[type[BaseException], ...]:
    return tuple(getattr(nv, n) for n in names if hasattr(nv, n))


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _init_failure(nv, err) -> str:
    known = {
        "NVMLError_LibraryNotFound": "NVIDIA driver library libnvidia-ml.so.1 not found: "
                                     f"install the NVIDIA driver, {_OTHER_PROVIDERS}",
        "NVMLError_DriverNotLoaded": "NVIDIA driver is not loaded (nvidia-smi says why): "
                                     f"load it, {_OTHER_PROVIDERS}",
        "NVMLError_LibRmVersionMismatch": "NVIDIA driver and library versions differ "
                                          "(driver upgraded?): reboot or reload the driver",
        "NVMLError_NoPermission": "no permission to use NVML: check the access rights of "
                                  "/dev/nvidia*",
    }
    for name, text in known.items():
        if isinstance(err, getattr(nv, name, ())):
            return text
    return f"NVML could not initialise: {err}"
