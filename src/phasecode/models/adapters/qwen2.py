"""Qwen2 / Qwen2.5: the LLaMA layout with q/k/v biases; sliding windows come per layer from
``config.layer_types`` (the base adapter reads it)."""

from phasecode.models.adapters.base import Adapter

ADAPTER = Adapter("qwen2")
