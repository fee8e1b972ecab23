"""Mistral: the LLaMA layout with a sliding window on every layer (its config has no
``layer_types``)."""

from phasecode.models.adapters.base import Adapter

ADAPTER = Adapter("mistral", window_on_all_layers=True)
