"""OLMo 2: post-norm only. Attention and the MLP read the residual stream itself (no pre-norm)
and their outputs pass an RMSNorm before the residual add; the q/k norms run over the whole
projection (all heads at once) before RoPE."""

from phasecode.models.adapters.base import Adapter

ADAPTER = Adapter(
    "olmo2",
    attention_norm=None,
    attention_post_norm="post_attention_layernorm",
    mlp_norm=None,
    mlp_post_norm="post_feedforward_layernorm",
    q_norm="self_attn.q_norm",
    k_norm="self_attn.k_norm",
)
