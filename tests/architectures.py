"""Tiny random models of the architectures beyond the LLaMA layout, built offline.

Each keeps what makes its architecture differ (q/k norms, four norms per block with 1 + w
gains, post-norms only, fused projections, GELU, per-layer-type RoPE, llama3 rope scaling) at
``helpers.CONVERTIBLE_SIZES``'s shape, so it converts on the byte-level tiny tokenizer.
"""

from __future__ import annotations

import torch
from helpers import CONVERTIBLE_SIZES
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    Olmo2Config,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    Qwen3Config,
)

from phasecode.models.adapters import adapter_for

HEAD_DIM = CONVERTIBLE_SIZES["hidden_size"] // CONVERTIBLE_SIZES["num_attention_heads"]
TOKENS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, max_position_embeddings=256)
ARCHITECTURES = ("qwen3", "gemma3_text", "phi3", "olmo2", "llama3_rope")


def tiny_config(name: str, **overrides) -> PretrainedConfig:
    """The config of one of ``ARCHITECTURES`` at the convertible tiny shape."""
    sizes = {**CONVERTIBLE_SIZES, **TOKENS, **overrides}
    if name == "qwen3":
        return Qwen3Config(**sizes, head_dim=HEAD_DIM)
    if name == "gemma3_text":  # one local (window 8) and one global layer, GELU(tanh)
        gemma = dict(
            head_dim=HEAD_DIM,
            query_pre_attn_scalar=HEAD_DIM,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
        )
        return Gemma3TextConfig(**{**gemma, **sizes})
    if name == "phi3":
        return Phi3Config(**sizes)
    if name == "olmo2":
        return Olmo2Config(**sizes)
    if name == "llama3_rope":  # LLaMA 3.1/3.2's scaled RoPE
        rope = dict(
            rope_type="llama3",
            rope_theta=10000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        )
        return LlamaConfig(**sizes, rope_parameters=rope)
    raise ValueError(f"no tiny config {name!r}")


def online_rotations(model: PreTrainedModel, down, post) -> None:
    """The prepared model's online rotations as plain hooks: x ↦ down(x) at each down_proj
    input and y ↦ post(y) after each post-norm (what the surgery applies)."""
    adapter = adapter_for(model)
    for layer in adapter.decoder_layers(model):
        adapter.part(layer, adapter.down).register_forward_pre_hook(lambda _, a: (down(a[0]),))
        for norm in adapter.post_norms:
            adapter.part(layer, norm).register_forward_hook(lambda _m, _a, out: post(out))


def tiny_architecture(name: str, seed: int = 0, **overrides) -> PreTrainedModel:
    """A randomly initialised model of one of ``ARCHITECTURES``, in eval mode."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(name, **overrides)).eval()
