"""Model detection from command lines (the table's MODEL column, the JSON's model)."""

from __future__ import annotations

import pytest

from canhazgpu.gpu.models import detect_model, model_of, model_provider
from canhazgpu.model import GpuProcess, GpuUsage


@pytest.mark.parametrize("cmdline, model", [
    ("vllm serve mistralai/Mistral-7B-Instruct-v0.1 --port 8000",
     "mistralai/Mistral-7B-Instruct-v0.1"),
    ("/opt/venv/bin/python3 /opt/venv/bin/vllm serve meta-llama/Meta-Llama-3-8B-Instruct",
     "meta-llama/Meta-Llama-3-8B-Instruct"),
    ("python -m vllm.entrypoints.cli.main serve Qwen/Qwen2-7B", "Qwen/Qwen2-7B"),
    ("python -m vllm.entrypoints.openai.api_server --model microsoft/DialoGPT-large",
     "microsoft/DialoGPT-large"),
    ("python serve.py --model=NousResearch/Nous-Hermes-2-Yi-34B --tp 2",
     "NousResearch/Nous-Hermes-2-Yi-34B"),
    ("lm_eval --model hf --model_args pretrained=EleutherAI/pythia-160m,dtype=float16 "
     "--tasks hellaswag", "EleutherAI/pythia-160m"),
    ("python -m lm_eval --model vllm --model_args=pretrained=google/gemma-2b", "google/gemma-2b"),
    ("python3 -m sglang.launch_server --model-path teknium/OpenHermes-2.5-Mistral-7B",
     "teknium/OpenHermes-2.5-Mistral-7B"),
    ("python3 -m sglang.launch_server --model-path=codellama/CodeLlama-7b-Instruct-hf",
     "codellama/CodeLlama-7b-Instruct-hf"),
    ("torchrun --nproc_per_node 4 run_clm.py --model_name_or_path gpt2 --do_train", "gpt2"),
    ("text-generation-launcher --model-id bigscience/bloom-560m --num-shard 1",
     "bigscience/bloom-560m"),
    ("/usr/src/server/.venv/bin/text-generation-server serve bigscience/bloom-560m",
     "bigscience/bloom-560m"),
    ("python train.py --model /data/models/llama-3-8b/", "/data/models/llama-3-8b"),
    # nothing to find
    ("python3 train.py --epochs 3", None),
    ("jupyter-lab --no-browser", None),
    ("lm_eval --model hf --tasks hellaswag", None),  # --model is lm_eval's backend
    ("vllm serve --port 8000", None),
    ("python x.py --model=", None),
    ("python x.py --model", None),
    ("", None),
])
def test_detect_model(cmdline, model):
    assert detect_model(cmdline.split()) == model


@pytest.mark.parametrize("model, provider", [
    ("mistralai/Mistral-7B-Instruct-v0.1", "mistralai"), ("gpt2", None),
    ("/data/models/llama", None), ("./llama/7b", None), (None, None),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama"),
])
def test_model_provider(model, provider):
    assert model_provider(model) == provider


def test_model_of_a_gpu_is_the_first_detected():
    usage = GpuUsage(index=0, processes=(
        GpuProcess(1, "jupyter", "bob", cmdline=("jupyter", "lab")),
        GpuProcess(2, "python3", "bob", cmdline=("vllm", "serve", "a/b")),
        GpuProcess(3, "python3", "bob", cmdline=("vllm", "serve", "c/d"))))
    assert model_of(usage) == "a/b"
    assert model_of(GpuUsage(index=0)) is None and model_of(None) is None
