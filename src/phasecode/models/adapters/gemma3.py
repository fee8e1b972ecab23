"""Gemma 3 (text): four norms per block — a pre-norm and a post-norm around attention and
around the MLP; the post-norms act on the branch output before the residual add, so the
residual rotation is applied online after them. RMSNorm gains are 1 + weight; q/k norms per
head; the embedding is scaled by √hidden inside the embedding module; the MLP activation is
GELU(tanh); local (sliding-window) and global layers have their own RoPE tables."""

from phasecode.models.adapters.base import Adapter

ADAPTER = Adapter(
    "gemma3_text",
    attention_norm="input_layernorm",
    attention_post_norm="post_attention_layernorm",
    mlp_norm="pre_feedforward_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
    norm_offset=1.0,
    q_norm="self_attn.q_norm",
    k_norm="self_attn.k_norm",
    rope_per_layer_type=True,
)
