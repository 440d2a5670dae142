"""The fake provider: the file format of DESIGN.md, re-read on every scan, clear errors."""

from __future__ import annotations

import json

import pytest

from canhazgpu.errors import InvalidRequest, ProviderUnavailable
from canhazgpu.gpu import get_provider
from canhazgpu.gpu.fake import FakeProvider, parse_fake
from canhazgpu.model import GpuProcess, GpuUsage

pytestmark = pytest.mark.anyio

DESIGN_EXAMPLE = {"gpus": [
    {"index": 0, "name": "Fake H100", "memory_total_mb": 81559, "memory_used_mb": 45,
     "processes": []},
    {"index": 2, "name": "Fake H100", "memory_total_mb": 81559, "memory_used_mb": 1069,
     "processes": [{"pid": 12345, "name": "python3", "user": "bob", "used_memory_mb": 1024,
                    "cmdline": ["vllm", "serve", "mistralai/Mistral-7B-Instruct-v0.1"]}]},
]}


@pytest.fixture
def gpus_file(tmp_path):
    path = tmp_path / "gpus.json"

    def write(doc):
        path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
        return path
    return write


async def test_design_example(gpus_file):
    provider = get_provider("fake", fake_path=str(gpus_file(DESIGN_EXAMPLE)))
    assert provider.name == "fake" and await provider.count() == 8
    usages = await provider.scan()
    assert [u.index for u in usages] == list(range(8))
    assert usages[0] == GpuUsage(index=0, name="Fake H100", memory_used_mb=45,
                                 memory_total_mb=81559)
    assert usages[2].processes == (GpuProcess(
        pid=12345, name="python3", user="bob", used_memory_mb=1024,
        cmdline=("vllm", "serve", "mistralai/Mistral-7B-Instruct-v0.1")),)
    assert usages[1] == GpuUsage(index=1, name="Fake GPU", memory_total_mb=81559)  # idle


async def test_every_scan_reads_the_file_again(gpus_file):
    path = gpus_file({"gpus": []})
    provider = FakeProvider(path)
    assert (await provider.scan())[3].memory_used_mb == 0
    gpus_file({"gpus": [{"index": 3, "memory_used_mb": 5000}]})
    assert (await provider.scan())[3].memory_used_mb == 5000


@pytest.mark.parametrize("doc, count", [
    ({"gpus": []}, 8), ({"count": 3}, 3), ({"gpus": [{"index": 11}]}, 12),
    ({"count": 2, "gpus": [{"index": 5}]}, 6),
])
def test_count_defaults_to_8_and_covers_every_listed_gpu(doc, count):
    assert parse_fake(doc)[0] == count and len(parse_fake(doc)[1]) == count


def test_defaults_of_gpus_and_processes():
    _, usages = parse_fake({"count": 1, "gpus": [{"index": 0, "error": "GPU is lost",
                                                  "processes": [
        {"pid": 7, "used_memory_mb": 600, "cmdline": "/usr/bin/python3 train.py"},
        {"pid": 8, "used_memory_mb": 500}]}]})
    (usage,) = usages
    assert usage.memory_used_mb == 1100  # the processes' sum when not given
    assert usage.error == "GPU is lost"
    assert usage.utilization_pct is None  # not given: the GPU reports none
    _, (busy,) = parse_fake({"count": 1, "gpus": [{"index": 0, "utilization_pct": 97}]})
    assert busy.utilization_pct == 97
    assert [(p.name, p.user, p.cmdline) for p in usage.processes] == [
        ("python3", "unknown", ("/usr/bin/python3", "train.py")), ("unknown", "unknown", ())]


@pytest.mark.parametrize("doc, message", [
    ("{not json", r"is not valid JSON: .* at line 1 column 2"),
    ("[]", r"the top level must be an object"),
    ({"gpus": {}}, r"gpus must be a list"),
    ({"gpus": [{"name": "x"}]}, r"\(gpus\[0\]\): index must be a whole number from 0 to 1023"),
    ({"gpus": [{"index": -1}]}, r"index must be a whole number from 0 to 1023, got -1"),
    ({"gpus": [{"index": 1}, {"index": 1}]}, r"GPU 1 is listed twice"),
    ({"gpus": [{"index": 0, "memory_used_mb": "5GB"}]}, r"memory_used_mb must be a whole"),
    ({"gpus": [{"index": 0, "processes": [{"name": "x"}]}]},
     r"\(gpus\[0\]\.processes\[0\]\): pid must be a whole number"),
    ({"gpus": [{"index": 0, "processes": [{"pid": 1, "user": 5}]}]}, r"user must be a string"),
    ({"gpus": [{"index": 0, "utilization_pct": 101}]},
     r"utilization_pct must be a whole number from 0 to 100, got 101"),
    ({"count": 0}, r"count must be a whole number >= 1, got 0"),
    ({"count": True}, r"count must be a whole number"),
    ({"count": 5000}, r"count must be at most 1024"),
])
async def test_bad_files_name_the_path_and_the_problem(gpus_file, doc, message):
    path = gpus_file(doc)
    with pytest.raises(ProviderUnavailable, match=message) as caught:
        await FakeProvider(path).scan()
    assert str(caught.value).startswith(f"fake GPU file {path}")


async def test_missing_file(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(ProviderUnavailable,
                       match=f"fake GPU file {path} cannot be read: No such file"):
        await FakeProvider(path).count()


def test_provider_names(monkeypatch, tmp_path):
    monkeypatch.delenv("CANHAZGPU_FAKE_GPUS", raising=False)
    with pytest.raises(InvalidRequest, match="unknown provider 'x': use nvidia, amd or fake"):
        get_provider("x")
    assert get_provider("fake").path is None  # no file: idle GPUs
    monkeypatch.setenv("CANHAZGPU_FAKE_GPUS", str(tmp_path / "g.json"))
    assert get_provider(None).path == tmp_path / "g.json"
    assert get_provider("fake", fake_path="/x.json").path.name == "x.json"
    assert get_provider("amd").name == "amd" and get_provider("nvidia").name == "nvidia"


async def test_without_a_file_the_fake_provider_has_idle_gpus(monkeypatch):
    monkeypatch.delenv("CANHAZGPU_FAKE_GPUS", raising=False)
    eight = get_provider("fake")
    assert await eight.count() == 8
    assert await eight.scan() == tuple(
        GpuUsage(index=i, name="Fake GPU", memory_total_mb=81559) for i in range(8))
    assert await get_provider("fake", fake_count=3).count() == 3
