"""GPU providers: where usage comes from (NVML, amd-smi, or a fake file), and model detection.

    provider = get_provider(None)          # auto-detect
    usages = await provider.scan()         # one GpuUsage per GPU, in index order

Providers import their vendor libraries lazily, so importing this package is cheap.
"""

from __future__ import annotations

import os

from ..errors import InvalidRequest, ProviderUnavailable
from .base import Provider

FAKE_ENV = "CANHAZGPU_FAKE_GPUS"
NAMES = ("nvidia", "amd", "fake")

__all__ = ["FAKE_ENV", "NAMES", "Provider", "get_provider"]


def get_provider(name: str | None, *, fake_path: str | None = None,
                 fake_count: int | None = None) -> Provider:
    """The provider called `name` ("nvidia", "amd", "fake"), or the one this machine has.

    Auto-detection (name None): the fake provider when a fake GPU file is given (argument
    or CANHAZGPU_FAKE_GPUS), else NVIDIA when NVML initialises, else AMD when amd-smi is
    on PATH. The fake provider without a file has `fake_count` (default 8) idle GPUs.
    """
    fake_path = fake_path or os.environ.get(FAKE_ENV) or None
    if name is None:
        name = _detect(fake_path)
    if name == "fake":
        from .fake import FakeProvider
        return FakeProvider(fake_path, count=fake_count)
    if name == "nvidia":
        from .nvidia import NvidiaProvider
        return NvidiaProvider()
    if name == "amd":
        from .amd import AmdProvider
        return AmdProvider()
    raise InvalidRequest(f"unknown provider {name!r}: use nvidia, amd or fake")


def _detect(fake_path: str | None) -> str:
    if fake_path:
        return "fake"
    from . import amd, nvidia
    if nvidia.available():
        return "nvidia"
    if amd.available():
        return "amd"
    raise ProviderUnavailable(
        "no GPU provider found: NVML does not initialise and amd-smi is not on PATH; "
        "name one with --provider nvidia|amd|fake (canhazgpu admin), or the provider "
        f"setting (CANHAZGPU_PROVIDER); {FAKE_ENV}=FILE stages fake GPUs")
