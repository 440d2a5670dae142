"""amd-smi parsing on recorded-style samples (tests/fixtures/amd-smi), and a stand-in amd-smi."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from canhazgpu.errors import ProviderUnavailable
from canhazgpu.gpu import amd
from canhazgpu.gpu.procinfo import ProcessFacts

pytestmark = pytest.mark.anyio
SAMPLES = Path(__file__).parent / "fixtures" / "amd-smi"


def sample(name: str):
    return json.loads((SAMPLES / name).read_text())


def test_list_and_names():
    uuids = amd.parse_list(sample("list.json"))
    assert list(uuids) == [0, 1, 2, 3]
    assert uuids[0] == "67ff74a1-0000-1000-80d4-f1c1d7dcdd3b"
    assert amd.parse_names(sample("static_asic.json")) == {i: "AMD Instinct MI300X"
                                                           for i in range(4)}


def test_memory_rocm6_and_rocm7_shapes():
    assert amd.parse_memory(sample("metric_mem_usage.json")) == {
        0: (16908, 196592), 1: (283, 196592), 2: (74112, 196592), 3: (None, 196592)}
    assert amd.parse_memory(sample("metric_mem_usage_rocm7.json"))[3] == (512, 196592)


def test_utilization():
    doc = [{"gpu": 0, "usage": {"gfx_activity": {"value": 93, "unit": "%"}}},
           {"gpu": 1, "usage": {"gfx_activity": "N/A"}}, {"gpu": 2}]
    assert amd.parse_utilization(doc) == {0: 93, 1: None, 2: None}


def test_processes():
    found = amd.parse_processes(sample("process.json"))
    assert found == {0: [(2711735, "python3", 15360), (2711790, "pt_main_thread", 512)],
                     1: [], 2: [(3100420, "python3", 73728)], 3: []}


@pytest.mark.parametrize("value, unit, expected", [
    ({"value": 2048, "unit": "MB"}, "B", 2048), ({"value": 1048576, "unit": "B"}, "MB", 1),
    ({"value": 8268, "unit": "KiB"}, "B", 8), ("2 GiB", "B", 2048), (3 * 1024 ** 2, "B", 3),
    (512, "MB", 512), ("N/A", "MB", None), ({"value": "N/A", "unit": "MB"}, "MB", None),
    ("5 potatoes", "MB", None), (None, "MB", None),
])
def test_memory_amounts(value, unit, expected):
    assert amd.mib(value, unit) == expected


def test_odd_documents_give_nothing_rather_than_crash():
    assert amd.entries({"other": 1}) == [] and amd.entries("text") == []
    assert amd.entries({"gpu": 0, "mem_usage": {}}) == [{"gpu": 0, "mem_usage": {}}]
    assert amd.parse_processes([{"gpu": 0, "process_list": "N/A"}, {"gpu": "x"}]) == {0: []}
    assert amd.parse_processes([{"gpu": 1, "process_list": [
        {"name": "python3", "pid": "77", "mem": 1048576}]}]) == {1: [(77, "python3", 1)]}


def test_build_usages():
    facts = {2711735: ProcessFacts(name="python3", user="alice",
                                   cmdline=("vllm", "serve", "mistralai/Mistral-7B-v0.1"))}
    usages = amd.build_usages(
        4, amd.parse_list(sample("list.json")), amd.parse_names(sample("static_asic.json")),
        amd.parse_memory(sample("metric_mem_usage.json")),
        amd.parse_processes(sample("process.json")), facts)
    assert [u.index for u in usages] == [0, 1, 2, 3]
    first = usages[0]
    assert (first.name, first.memory_used_mb, first.memory_total_mb) == \
        ("AMD Instinct MI300X", 16908, 196592)
    assert [(p.pid, p.name, p.user, p.used_memory_mb) for p in first.processes] == [
        (2711735, "python3", "alice", 15360), (2711790, "pt_main_thread", "unknown", 512)]
    assert first.processes[0].cmdline[0] == "vllm"
    assert usages[1].processes == () and usages[1].error is None
    assert usages[3].error == "amd-smi reports no used memory for this GPU"


def test_decode_skips_warnings():
    assert amd.decode(b'WARNING: User is missing the following groups\n[{"gpu": 0}]') == \
        [{"gpu": 0}]
    with pytest.raises(ProviderUnavailable, match="amd-smi printed no JSON"):
        amd.decode(b"Segmentation fault")


@pytest.fixture
def amd_smi(tmp_path):
    """An executable that answers like amd-smi from the samples."""
    tool = tmp_path / "amd-smi"
    tool.write_text(f"""#!/bin/sh
case "$1" in
  list) cat "{SAMPLES}/list.json" ;;
  static) cat "{SAMPLES}/static_asic.json" ;;
  metric) cat "{SAMPLES}/metric_mem_usage_rocm7.json" ;;
  process) cat "{SAMPLES}/process.json" ;;
  *) echo "amd-smi: unknown command $1" >&2; exit 2 ;;
esac
""")
    tool.chmod(0o755)
    return tool


async def test_provider_end_to_end(amd_smi):
    provider = amd.AmdProvider(str(amd_smi))
    assert provider.name == "amd" and await provider.count() == 4
    usages = await provider.scan()
    assert [u.memory_used_mb for u in usages] == [16908, 283, 74112, 512]
    assert [len(u.processes) for u in usages] == [2, 0, 1, 0]
    assert all(u.error is None and u.name == "AMD Instinct MI300X" for u in usages)


async def test_provider_failures(amd_smi, tmp_path):
    with pytest.raises(ProviderUnavailable, match="amd-smi bogus --json failed: amd-smi: "
                                                  "unknown command bogus"):
        await amd.AmdProvider(str(amd_smi)).run_json("bogus")
    with pytest.raises(ProviderUnavailable, match="cannot run .*is ROCm installed"):
        await amd.AmdProvider(str(tmp_path / "absent")).count()
