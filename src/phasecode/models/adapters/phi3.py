"""Phi-3 / Phi-3.5: the LLaMA layout with fused projections (``qkv_proj``: q, k, v rows in
that order; ``gate_up_proj``: gate rows, then up rows); LongRoPE on the long-context variants
lives in the model's rotary module; a configured sliding window applies to every layer."""

from phasecode.models.adapters.base import Adapter

ADAPTER = Adapter(
    "phi3",
    qkv="self_attn.qkv_proj",
    gate_up="mlp.gate_up_proj",
    activation="mlp.activation_fn",
    window_on_all_layers=True,
)
