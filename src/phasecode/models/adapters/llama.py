"""LLaMA-2/3 and SmolLM: the reference layout, full causal attention on every layer."""

from phasecode.models.adapters.base import Adapter

ADAPTER = Adapter("llama")
