"""LLaMA-2/3/3.x and SmolLM: the reference layout. Pre-norms, separate projections, SiLU, full
causal attention on every layer; LLaMA 3.1/3.2's ``rope_scaling`` (type llama3) lives in the
model's own rotary module, which phasecode calls rather than re-implements."""

from phasecode.models.adapters.base import Adapter

ADAPTER = Adapter("llama")
