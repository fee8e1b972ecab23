"""Shared fixtures: tiny random models and a byte-level tokenizer, all built offline."""

from __future__ import annotations

import os
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere

import pytest
import torch
from helpers import byte_tokenizer
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

_CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
TINY_SIZES = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def make_tiny_model(arch: str, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised 2-layer causal LM of the given model_type, in eval mode."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_CONFIGS[arch](**TINY_SIZES)).eval()


@pytest.fixture
def tiny_model() -> Callable[..., PreTrainedModel]:
    """Factory: tiny_model("llama" | "qwen2" | "mistral") -> model (same weights per seed)."""
    return make_tiny_model


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (one token per byte, ids 2..257) with <s>=0 as BOS and </s>=1."""
    return byte_tokenizer()


@pytest.fixture(autouse=True, scope="session")
def _test_environment(tmp_path_factory):
    """Every test tensor is tiny: one intra-op thread (two spin ~30x slower on a busy 2-core
        machine), and the neuron kernel runs eagerly (tests/test_surgery.py checks the compiled one,
        which costs a compilation). phasecode's cache is the session's own, so no test reads back
        what an earlier run remembered (a prefix choice) and the user's cache stays untouched. ANN
    scores are not remembered, so a test comparing two evaluations compares two measurements."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PHASECODE_COMPILE", "0")
        patch.setenv("PHASECODE_CACHE", str(tmp_path_factory.mktemp("phasecode-cache")))
        patch.setenv(
            "PHASECODE_SCORE_CACHE", "0"
        )  # every test measures; tests/inference turn it on
        yield
    torch.set_num_threads(threads)
