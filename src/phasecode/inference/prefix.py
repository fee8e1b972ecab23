"""Prefixed outlier tokens (PrefixQuant-style): keep the tokens with massive activations in a
KV cache computed once, so the windows scored after it carry no such outliers themselves.

In many LLMs the first token, and a few tokens such as "\n" or ".", get activations at the
down_proj input orders of magnitude above all others; they act as attention sinks. Putting them
in a prefix, whose keys/values are computed once, takes those outliers out of every window.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PretrainedConfig

from phasecode.errors import PhasecodeError


@dataclass(frozen=True)
class Prefix:
    """Prefix tokens with their per-layer keys/values ([1, kv_heads, len, head_dim]).

    The keys/values are those of the model `build_prefix` was given, in its state then: rebuild
    the prefix after changing the model (e.g. converting it to spiking neurons).
    """

    token_ids: list[int]
    keys_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    config: PretrainedConfig
    seconds: float  # the one-off cost of computing the keys/values

    def __len__(self) -> int:
        return len(self.token_ids)

    def cache_for(self, batch_size: int) -> DynamicCache:
        """A fresh cache holding the prefix for a batch of windows.

        The stored tensors go in as expanded views, never copied here and never written: a
        DynamicCache grows by concatenation, which makes new tensors, so one prefix serves any
        number of batches. Transformers then places the window at positions len(prefix)...
        """
        data = [
            (k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1))
            for k, v in self.keys_values
        ]
        return DynamicCache(data, config=self.config)


def build_prefix(model: nn.Module, token_ids: Sequence[int]) -> Prefix:
    """Run the prefix tokens through the model once and keep their keys/values."""
    if not token_ids:
        raise PhasecodeError("a prefix needs at least one token")
    device = next(model.parameters()).device
    start = time.perf_counter()
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(
            input_ids=torch.tensor([list(token_ids)], device=device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    keys_values = tuple((layer.keys, layer.values) for layer in cache.layers)
    if any(k.shape[-2] != len(token_ids) for k, _ in keys_values):
        raise PhasecodeError(f"a prefix of {len(token_ids)} tokens exceeds the sliding window")
    return Prefix(list(token_ids), keys_values, model.config, time.perf_counter() - start)


def run_after(model: nn.Module, prefix: Prefix | None, input_ids: torch.Tensor, **kwargs):
    """The model's output for ``input_ids`` after the prefix's cached keys/values (without a
    prefix: the tokens alone); ``kwargs`` go to the model's forward."""
    cache = prefix.cache_for(len(input_ids)) if prefix is not None else None
    return model(input_ids=input_ids, cache=cache, use_cache=cache is not None, **kwargs)
