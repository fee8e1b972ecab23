"""The loglikelihood scheduler of phasecode's lm-eval model: which tokens run together.

A loglikelihood request's window is split where its scoring starts: the shared part (a
multiple-choice question's context) runs once per distinct value, and each request's tail
runs from a copy of its keys/values. Contexts go in batches of ``batch_size``, longest first
(so a batch pads little); consecutive batches form a pool of up to POOL_POSITIONS cached
positions, whose continuations are sorted by length and batched together (measured on 300
items of the four tasks: 32.2k instead of 48.5k continuation tokens for 29.6k real ones).
A model with sliding-window layers shares nothing: its rows are whole windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from phasecode.models.adapters import adapter_for

# cached positions (contexts × the pool's widest context, prefix included) whose keys/values a
# pool of context batches keeps while its continuations run: ~0.4 GB for SmolLM2-135M, ~2.7 GB
# for a 70B model with grouped KV heads; a single context batch may exceed it
POOL_POSITIONS = 8192

# (context, continuation) strings, context tokens, continuation tokens: TemplateLM's request
TokenRequest = tuple[tuple[str, str] | None, list[int], list[int]]
# per decoder layer, the keys and values [batch, kv_heads, length, head_dim] of a cache
KeysValues = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Row:
    """A loglikelihood request's window split where its scoring starts: ``shared`` runs once
    for every request with the same value; ``tail``'s last len(targets) logits score ``targets``
    (all of them, unless context sharing is off)."""

    index: int
    shared: tuple[int, ...]
    tail: list[int]
    targets: list[int]


# one context batch: distinct shared tokens with the rows that continue each
ContextBatch = list[tuple[tuple[int, ...], list[Row]]]


def context_pools(rows: list[Row], batch_size: int, prefix_len: int) -> list[list[ContextBatch]]:
    """Rows grouped by shared tokens, in batches of batch_size contexts, longest first (so a
    batch pads little), and consecutive batches pooled up to POOL_POSITIONS; rows with nothing
    shared form their own pool, which runs after the prefix alone."""
    groups: dict[tuple[int, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(row.shared, []).append(row)
    pools: list[list[ContextBatch]] = [[[((), groups.pop(()))]]] if () in groups else []
    ordered = sorted(groups.items(), key=lambda item: -len(item[0]))
    contexts = 0
    for at in range(0, len(ordered), batch_size):
        batch = ordered[at : at + batch_size]
        width = prefix_len + len(pools[-1][0][0][0]) if contexts else 0
        if not contexts or (contexts + len(batch)) * width > POOL_POSITIONS:
            pools.append([])
            contexts = 0
        pools[-1].append(batch)
        contexts += len(batch)
    return pools


def full_attention(model: torch.nn.Module) -> bool:
    """Whether no layer has a sliding window. A sliding layer's cache drops, and its mask
    hides, keys by cache slot, which the padding between a context and its continuation
    shifts: its requests run whole windows instead."""
    adapter = adapter_for(model)
    layers = range(adapter.num_layers(model))
    return all(adapter.sliding_window(model.config, i) is None for i in layers)


def stacked(pasts: list[KeysValues | None]) -> KeysValues | None:
    """The context batches' keys/values as one batch, each right-padded to the widest (the
    padding is hidden like a short context's); None when there are none."""
    if pasts[0] is None:
        return None
    if len(pasts) == 1:
        return pasts[0]
    width = max(past[0][0].shape[-2] for past in pasts)

    def padded(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([F.pad(t, (0, 0, 0, width - t.shape[-2])) for t in tensors])

    return [
        (padded([past[i][0] for past in pasts]), padded([past[i][1] for past in pasts]))
        for i in range(len(pasts[0]))
    ]


def rows_of(past: KeysValues | None, picks: list[int], width: int) -> KeysValues | None:
    """The first `width` cached positions of rows `picks` (a context's row once per
    continuation)."""
    if past is None:
        return None
    index = torch.tensor(picks, device=past[0][0].device)
    return [
        (keys[..., :width, :].index_select(0, index), values[..., :width, :].index_select(0, index))
        for keys, values in past
    ]
