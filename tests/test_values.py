"""model.Value: what a frozen dataclass gives (equality, hash, repr, copies, no assignment),
and dataclasses' functions and the API's encoder take a Value for one (start-up time:
docs/benchmarks.md, "CLI start-up")."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from canhazgpu.api import protocol
from canhazgpu.config import Config
from canhazgpu.model import GpuProcess, GpuState, GpuUsage, Hold, PoolView, Usage, replace

HOLD = Hold(gpu=1, rid="r1", user="ada", kind="manual", start_ms=5, expires_ms=9)
STATE = GpuState(1, hold=HOLD, usage=GpuUsage(1, processes=(GpuProcess(7, "py", "ada"),)))


def test_equal_values_are_equal_and_hash_alike():
    twin = Hold(1, "r1", "ada", "manual", 5, expires_ms=9)
    assert HOLD == twin and hash(HOLD) == hash(twin) and HOLD != replace(HOLD, gpu=2)
    assert HOLD != ("r1",) and GpuProcess(7, "py", "ada") != GpuUsage(7)
    assert repr(HOLD).startswith("Hold(gpu=1, rid='r1', user='ada', kind='manual'")


def test_a_value_cannot_change():
    with pytest.raises(AttributeError):
        HOLD.gpu = 2
    with pytest.raises(AttributeError):
        del HOLD.user
    with pytest.raises(AttributeError):
        HOLD.extra = 1  # no __dict__: only its fields


def test_copies_and_pickles_are_equal():
    for value in (HOLD, STATE, Usage(3, (GpuUsage(0),), idle={"r": {"since": 1}})):
        assert copy.copy(value) == value == copy.deepcopy(value)
        assert pickle.loads(pickle.dumps(value)) == value


def test_dataclasses_functions_take_it_for_a_dataclass():
    assert dataclasses.is_dataclass(HOLD)
    assert [f.name for f in dataclasses.fields(Usage)] == ["scanned_ms", "gpus", "source",
                                                           "idle"]
    assert dataclasses.replace(HOLD, note="n") == replace(HOLD, note="n")
    assert dataclasses.asdict(STATE)["hold"]["expires_ms"] == 9
    config = dataclasses.replace(Config(), host="h2")
    assert config.host == "h2" and config.origins == {} and Config().host == ""


def test_the_api_encodes_and_decodes_it():
    view = PoolView(now_ms=10, gpus=(STATE,), provider="fake")
    assert protocol.view(protocol.encode(view)) == view
