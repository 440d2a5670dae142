"""nvidia.py against a stand-in NVML driver (like gpustat's NvidiaDriverMock), plus real GPUs."""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml
import pytest

from canhazgpu.errors import ProviderUnavailable
from canhazgpu.gpu import get_provider, nvidia
from canhazgpu.gpu.procinfo import ProcessFacts

pytestmark = pytest.mark.anyio
MIB = 1024 * 1024
GONE_PID = 999_999_999


def nvml_error(code):
    return pynvml.NVMLError(code)


@dataclass
class Device:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: bytes = b"GPU-5b1c3a52-6f0e-2a43-9e43-0d5e0a4f1c11"
    total_mib: int = 81559
    used_v1_mib: int = 530  # v1 counts memory reserved by the driver as used
    used_v2_mib: int = 45
    compute: list = field(default_factory=list)  # (pid, bytes or None)
    graphics: list = field(default_factory=list)
    unsupported: set = field(default_factory=set)
    lost: bool = False
    utilization: int = 37


class Driver:
    """NVML as the bindings expose it, with switches for old drivers and broken GPUs."""

    def __init__(self, devices, *, memory_v2=True, processes_v3=True, init_error=None):
        self.devices = devices
        self.memory_v2, self.processes_v3 = memory_v2, processes_v3
        self.init_error = init_error
        self.calls: list[str] = []

    def install(self, monkeypatch):
        for name in dir(self):
            if name.startswith("nvml"):
                monkeypatch.setattr(pynvml, name, getattr(self, name))
        for attr, value in (("ready", False), ("exit_hook", True), ("memory_v2", None),
                            ("chosen", {})):
            monkeypatch.setattr(nvidia._State, attr, value)
        return self

    def _check(self, device, what):
        self.calls.append(what)
        if what in device.unsupported:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlInit(self):
        self.calls.append("init")
        if self.init_error is not None:
            raise nvml_error(self.init_error)

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        if self.devices[index].lost:
            raise nvml_error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return self.devices[index]

    def nvmlDeviceGetName(self, device):
        self._check(device, "name")
        return device.name

    def nvmlDeviceGetUUID(self, device):
        self._check(device, "uuid")
        return device.uuid  # the bindings return bytes here

    def nvmlDeviceGetMemoryInfo(self, device, version=None):
        self._check(device, "memory_v2" if version else "memory_v1")
        if version and not self.memory_v2:
            raise nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        used = device.used_v2_mib if version else device.used_v1_mib
        return SimpleNamespace(total=device.total_mib * MIB, used=used * MIB)

    def nvmlDeviceGetUtilizationRates(self, device):
        self._check(device, "utilization")
        return SimpleNamespace(gpu=device.utilization, memory=3)

    def _procs(self, device, kind, version):
        self._check(device, f"{kind}_{version}")
        if version == "v3" and not self.processes_v3:
            raise nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used)
                for pid, used in getattr(device, kind)]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, device):
        return self._procs(device, "compute", "v3")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, device):
        return self._procs(device, "compute", "v2")

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, device):
        return self._procs(device, "graphics", "v3")

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, device):
        return self._procs(device, "graphics", "v2")


@pytest.fixture
def facts(monkeypatch):
    """Process facts without touching real PIDs."""
    known = {}

    def describe_all(pids):
        return {pid: known.get(pid, ProcessFacts()) for pid in pids}
    monkeypatch.setattr(nvidia.procinfo, "describe_all", describe_all)
    return known


async def test_memory_v2_preferred_and_v1_fallback_remembered(monkeypatch, facts):
    driver = Driver([Device(), Device()]).install(monkeypatch)
    usages = await nvidia.NvidiaProvider().scan()
    assert [(u.memory_used_mb, u.memory_total_mb) for u in usages] == [(45, 81559)] * 2
    assert "memory_v1" not in driver.calls

    old = Driver([Device(), Device()], memory_v2=False).install(monkeypatch)
    usages = await nvidia.NvidiaProvider().scan()
    assert [u.memory_used_mb for u in usages] == [530, 530]
    assert old.calls.count("memory_v2") == 1  # tried once, then v1 only


async def test_processes_v3_then_v2_on_old_drivers(monkeypatch, facts):
    device = Device(compute=[(101, 2048 * MIB)])
    driver = Driver([device, device], processes_v3=False).install(monkeypatch)
    usages = await nvidia.NvidiaProvider().scan()
    assert [[(p.pid, p.used_memory_mb) for p in u.processes] for u in usages] == \
        [[(101, 2048)], [(101, 2048)]]
    assert driver.calls.count("compute_v3") == 1 and driver.calls.count("compute_v2") == 2


async def test_compute_and_graphics_merged_by_pid_and_unknown_memory(monkeypatch, facts):
    facts[101] = ProcessFacts(name="python3", user="alice", cmdline=("python3", "train.py"))
    device = Device(used_v2_mib=9000, compute=[(101, 4096 * MIB), (102, None)],
                    graphics=[(101, 1024 * MIB), (103, 512 * MIB)])
    Driver([device]).install(monkeypatch)
    (usage,) = await nvidia.NvidiaProvider().scan()
    assert [(p.pid, p.used_memory_mb, p.user, p.name) for p in usage.processes] == [
        (101, 4096, "alice", "python3"), (102, None, "unknown", "unknown"),
        (103, 512, "unknown", "unknown")]
    assert usage.processes[0].cmdline == ("python3", "train.py")
    assert usage.uuid == "GPU-5b1c3a52-6f0e-2a43-9e43-0d5e0a4f1c11"


async def test_not_supported_fields_are_left_empty(monkeypatch, facts):
    device = Device(unsupported={"name", "uuid", "memory_v2", "memory_v1", "compute_v3",
                                 "graphics_v3", "utilization"})
    Driver([device]).install(monkeypatch)
    (usage,) = await nvidia.NvidiaProvider().scan()
    assert (usage.name, usage.uuid, usage.memory_used_mb, usage.processes, usage.error,
            usage.utilization_pct) == ("", None, 0, (), None, None)


async def test_utilization_is_read_per_gpu(monkeypatch, facts):
    Driver([Device(utilization=0), Device(utilization=88)]).install(monkeypatch)
    assert [u.utilization_pct for u in await nvidia.NvidiaProvider().scan()] == [0, 88]


async def test_a_lost_gpu_is_an_error_not_a_crash(monkeypatch, facts):
    Driver([Device(), Device(lost=True), Device()]).install(monkeypatch)
    usages = await nvidia.NvidiaProvider().scan()
    assert [u.index for u in usages] == [0, 1, 2]
    assert [u.error for u in usages] == [None, "GPU is lost", None]
    assert usages[2].memory_used_mb == 45


async def test_nvml_initialised_once_and_shut_down(monkeypatch, facts):
    driver = Driver([Device()]).install(monkeypatch)
    provider = nvidia.NvidiaProvider()
    assert await provider.count() == 1
    await provider.scan()
    await provider.scan()
    assert driver.calls.count("init") == 1
    nvidia.shutdown()
    assert driver.calls.count("shutdown") == 1
    nvidia.shutdown()  # twice is harmless
    await provider.scan()
    assert driver.calls.count("init") == 2


async def test_missing_library_or_driver_is_a_clear_error(monkeypatch):
    Driver([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND).install(monkeypatch)
    with pytest.raises(ProviderUnavailable, match="libnvidia-ml.so.1 not found"):
        await nvidia.NvidiaProvider().scan()
    assert nvidia.available() is False
    Driver([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED).install(monkeypatch)
    with pytest.raises(ProviderUnavailable, match="driver is not loaded"):
        await nvidia.NvidiaProvider().count()
    Driver([], init_error=pynvml.NVML_ERROR_UNKNOWN).install(monkeypatch)
    with pytest.raises(ProviderUnavailable, match="NVML could not initialise: Unknown Error"):
        await nvidia.NvidiaProvider().count()


async def test_bindings_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.raises(ProviderUnavailable, match="pip install nvidia-ml-py"):
        await nvidia.NvidiaProvider().scan()


def test_auto_detection_order(monkeypatch, tmp_path):
    monkeypatch.delenv("CANHAZGPU_FAKE_GPUS", raising=False)
    Driver([Device()]).install(monkeypatch)
    assert get_provider(None).name == "nvidia"
    Driver([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND).install(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))  # no amd-smi either
    with pytest.raises(ProviderUnavailable, match="no GPU provider found.*--provider"):
        get_provider(None)
    amd_smi = tmp_path / "amd-smi"
    amd_smi.write_text("#!/bin/sh\n")
    amd_smi.chmod(0o755)
    assert get_provider(None).name == "amd"
    assert get_provider(None, fake_path=str(tmp_path / "gpus.json")).name == "fake"


async def test_real_process_facts_through_the_driver(monkeypatch):
    device = Device(compute=[(os.getpid(), 100 * MIB), (GONE_PID, 10 * MIB)])
    Driver([device]).install(monkeypatch)
    (usage,) = await nvidia.NvidiaProvider().scan()
    mine, gone = usage.processes
    assert mine.user == pwd.getpwuid(os.getuid()).pw_name
    assert mine.name not in ("", "unknown") and any("pytest" in a for a in mine.cmdline)
    assert (gone.user, gone.name, gone.cmdline) == ("unknown", "unknown", ())


# ---------------------------------------------------------------- real hardware
@pytest.fixture
def real_nvml():
    if not nvidia.available():
        pytest.skip("NVML does not initialise here (no NVIDIA GPU or driver)")


@pytest.mark.gpu
async def test_real_gpus_scan(real_nvml):
    provider = get_provider("nvidia")
    count = await provider.count()
    usages = await provider.scan()
    assert count >= 1 and [u.index for u in usages] == list(range(count))
    for usage in usages:
        assert usage.error or (usage.memory_total_mb > 0 and usage.name)
        assert 0 <= usage.memory_used_mb <= usage.memory_total_mb or usage.error
        assert all(p.pid > 0 and p.user for p in usage.processes)
        assert usage.utilization_pct is None or 0 <= usage.utilization_pct <= 100
