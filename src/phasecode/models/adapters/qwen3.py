"""Qwen3: the LLaMA layout (no q/k/v biases) plus an RMSNorm on every query and key head
before RoPE. The q/k norms sit inside attention, before the Q and K sites (which read after
RoPE), so only the simulator runs them: by accumulate–difference, like every norm."""

from phasecode.models.adapters.base import Adapter

ADAPTER = Adapter("qwen3", q_norm="self_attn.q_norm", k_norm="self_attn.k_norm")
