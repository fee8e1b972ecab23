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
from tqdm.auto import tqdm
from transformers import DynamicCache, PretrainedConfig, PreTrainedTokenizerBase

from phasecode.calibration.observers import hooks
from phasecode.errors import PhasecodeError
from phasecode.models.adapters import adapter_for


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


def prefix_token_ids(tokenizer: PreTrainedTokenizerBase, outliers: Sequence[int]) -> list[int]:
    """[BOS (if the tokenizer has one)] + the outlier tokens, without repeats.

    Windows scored after the prefix must not start with BOS again; token_windows adds no
    special tokens, so they don't.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return list(dict.fromkeys([*bos, *outliers]))


@dataclass(frozen=True)
class OutlierToken:
    """A token that had outlier activations, for reporting."""

    token_id: int
    text: str
    count: int  # positions where it was an outlier
    max_abs: float  # largest |x| at the down_proj inputs over those positions


@dataclass(frozen=True)
class OutlierSearch:
    """Every outlier token, most frequent first, and the top ones to put in a prefix."""

    token_ids: list[int]
    tokens: list[OutlierToken]
    median: float  # median over positions of the per-position max |x|
    threshold: float


def find_outlier_tokens(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    windows: torch.LongTensor,
    top: int = 3,
    factor: float = 20.0,
    skip_positions: int = 1,
    module: str | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> OutlierSearch:
    """Tokens whose max |x| at the down_proj inputs exceeds `factor` × the median position's.

    Per position, the max |x| is taken over every layer and channel of `module` (relative to a
    decoder layer; default the adapter's down_proj). The first `skip_positions` of each window
    are left out: position 0 is an attention sink whatever its token, and BOS takes that role
    in the prefix. Tokens rank by how often they are outliers, then by their largest |x|.
    """
    if windows.dim() != 2 or not len(windows) or not 0 <= skip_positions < windows.shape[1]:
        raise PhasecodeError(
            f"need windows [n >= 1, seq_len] with 0 <= skip_positions < seq_len, got "
            f"shape {tuple(windows.shape)} and skip_positions={skip_positions}"
        )
    if top < 1:
        raise PhasecodeError(f"top must be >= 1, got {top}")
    peaks = _position_peaks(model, windows, module, batch_size, progress)[:, skip_positions:]
    ids, peaks = windows[:, skip_positions:].flatten(), peaks.flatten()
    median = peaks.median().item()
    tokens = _outlier_tokens(tokenizer, ids, peaks, factor * median)
    return OutlierSearch([t.token_id for t in tokens[:top]], tokens, median, factor * median)


def _outlier_tokens(
    tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, peaks: torch.Tensor, threshold: float
) -> list[OutlierToken]:
    """The tokens at positions whose peak exceeds the threshold, most frequent first."""
    outlier = peaks > threshold
    counts = torch.bincount(ids[outlier])
    largest = torch.zeros(len(counts)).scatter_reduce(0, ids[outlier], peaks[outlier], "amax")
    tokens = [
        OutlierToken(i, tokenizer.decode([i]), int(counts[i]), float(largest[i]))
        for i in counts.nonzero().flatten().tolist()
    ]
    return sorted(tokens, key=lambda t: (-t.count, -t.max_abs))


def _position_peaks(
    model: nn.Module,
    windows: torch.LongTensor,
    module: str | None,
    batch_size: int,
    progress: bool,
) -> torch.Tensor:
    """[n, seq_len] max |x| over all layers and channels at the input of `module`."""
    adapter = adapter_for(model)
    names = [
        adapter.layer_path(i, module or adapter.down) for i in range(adapter.num_layers(model))
    ]
    tracker = _PeakTracker()
    device = next(model.parameters()).device
    peaks = []
    with hooks(model, dict.fromkeys(names, tracker)), torch.no_grad():
        for batch in tqdm(
            windows.split(batch_size), desc="outlier tokens", unit="batch", disable=not progress
        ):
            tracker.peak = None
            model(input_ids=batch.to(device), use_cache=False, logits_to_keep=1)
            peaks.append(tracker.peak.cpu())
    return torch.cat(peaks)


class _PeakTracker:
    """Forward pre-hook keeping, per position, the max |x| over every module it is hooked on."""

    def __init__(self) -> None:
        self.peak: torch.Tensor | None = None

    def __call__(self, _: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().abs().amax(dim=-1).float()
        self.peak = x if self.peak is None else torch.maximum(self.peak, x)
