"""Which model a GPU process serves or trains, read from its command line (the MODEL column).

Covers the common launchers: `vllm serve ORG/NAME`, `--model ORG/NAME` / `--model=...`,
lm_eval's `--model_args pretrained=ORG/NAME,...`, sglang's `--model-path`, Hugging Face
scripts' `--model_name_or_path`, and text-generation-inference's `--model-id` /
`text-generation-server serve ORG/NAME`. Best effort: an unknown launcher gives None.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from ..model import GpuUsage

# Flags whose value is a model, most specific first. lm_eval's `--model` names a backend
# (hf, vllm), so it is only trusted when the program is not lm_eval.
_MODEL_FLAGS = (
    "--model-path", "--model_path", "--model-id", "--model_id",
    "--model_name_or_path", "--model-name-or-path", "--pretrained_model_name_or_path",
    "--model",
)
_MODEL_ARGS_FLAGS = ("--model_args", "--model-args")
_MODEL_ARGS_KEYS = ("pretrained", "model", "model_name", "model_path")
_SERVE_PROGRAMS = ("vllm", "text-generation-server")  # `PROGRAM serve MODEL`
_LM_EVAL = ("lm_eval", "lm-eval")
_HUB_ID = re.compile(r"^([A-Za-z0-9][\w.-]*)/[\w.-]+$")


def detect_model(cmdline: Sequence[str]) -> str | None:
    """The model id a command line names, e.g. 'mistralai/Mistral-7B-Instruct-v0.1'."""
    args = [str(a) for a in cmdline]
    flags = _flag_values(args)
    for flag in _MODEL_ARGS_FLAGS:
        found = _from_model_args(flags.get(flag))
        if found:
            return found
    lm_eval = any(os.path.basename(a) in _LM_EVAL for a in args)
    for flag in _MODEL_FLAGS:
        if flag == "--model" and lm_eval:
            continue
        found = _clean(flags.get(flag))
        if found:
            return found
    return _served(args)


def model_provider(model_id: str | None) -> str | None:
    """The organisation of a hub id ('mistralai' for 'mistralai/Mistral-7B'); None for paths."""
    match = _HUB_ID.match(model_id or "")
    return match.group(1) if match else None


def model_of(usage: GpuUsage | None) -> str | None:
    """The model of a GPU: the first one detected among its processes."""
    return first_model(p.cmdline for p in usage.processes) if usage else None


def first_model(cmdlines: Iterable[Sequence[str]]) -> str | None:
    for cmdline in cmdlines:
        found = detect_model(cmdline)
        if found:
            return found
    return None


def _flag_values(args: list[str]) -> dict[str, str]:
    """The first value of every long option, in both `--flag value` and `--flag=value` form."""
    values: dict[str, str] = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--") or arg == "--":
            continue
        if "=" in arg:
            flag, value = arg.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):
            flag, value = arg, args[i + 1]
        else:
            continue
        values.setdefault(flag, value)
    return values


def _from_model_args(text: str | None) -> str | None:
    """lm_eval's `pretrained=ORG/NAME,dtype=float16` -> 'ORG/NAME'."""
    if not text:
        return None
    pairs = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    for key in _MODEL_ARGS_KEYS:
        found = _clean(pairs.get(key))
        if found:
            return found
    return None


def _served(args: list[str]) -> str | None:
    """`vllm serve MODEL` (also `python -m vllm.entrypoints.cli.main serve MODEL`)."""
    for i, arg in enumerate(args[:-2]):
        program = os.path.basename(arg)
        if args[i + 1] == "serve" and any(
                program == p or program.startswith(p + ".") for p in _SERVE_PROGRAMS):
            return None if args[i + 2].startswith("-") else _clean(args[i + 2])
    return None


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().strip("'\"").rstrip("/")
    return value or None
