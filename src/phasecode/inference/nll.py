"""Scoring token windows: the one forward loop that calibration, prefix choice and
perplexity share. Each window is scored on its own (GPTQ protocol): the logits at positions
0..L-2 predict tokens 1..L-1, optionally after a prefix's cached keys/values.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from phasecode.errors import PhasecodeError
from phasecode.inference.prefix import Prefix, run_after

EVAL_BATCH_SIZE = 4  # windows per forward pass when evaluating perplexity


def check_seq_len(model: nn.Module, seq_len: int, prefix_len: int = 0) -> None:
    """Refuse windows (plus prefix) longer than the positions the model was trained on."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and seq_len + prefix_len > limit:
        with_prefix = f" + prefix {prefix_len}" if prefix_len else ""
        raise PhasecodeError(
            f"seq_len {seq_len}{with_prefix} exceeds the model's {limit} positions"
        )


@dataclass(frozen=True)
class WindowNLL:
    """Summed negative log-likelihood and predicted-token count of each window."""

    nll: torch.Tensor  # float64 [n]
    tokens: torch.Tensor  # long [n]
    seconds: float
    source: str = "measured"  # or "cache": read back by ``score_cache`` (seconds then too)

    @property
    def mean_nll(self) -> float:
        """The mean NLL over all predicted tokens."""
        return self.nll.sum().item() / self.tokens.sum().item()

    @property
    def ppl(self) -> float:
        """exp of the mean NLL over all predicted tokens (not the mean of window perplexities)."""
        return math.exp(self.mean_nll)


def perplexity(
    model: nn.Module,
    windows: torch.LongTensor,
    prefix: Prefix | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> WindowNLL:
    """Score each window, `batch_size` at a time so only one batch's logits are ever held.

    With a prefix, each window follows the prefix's cached keys/values; the prefix tokens are
    context only, so the same L-1 tokens of each window are scored as without it.
    """
    if windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2 or batch_size < 1:
        raise PhasecodeError(
            f"need windows [n >= 1, seq_len >= 2] and batch_size >= 1, got shape "
            f"{tuple(windows.shape)} and batch_size {batch_size}"
        )
    check_seq_len(model, windows.shape[1], len(prefix) if prefix is not None else 0)
    device = next(model.parameters()).device
    start = time.perf_counter()
    nll = []
    with torch.no_grad():
        for batch in tqdm(
            windows.split(batch_size), desc="perplexity", unit="batch", disable=not progress
        ):
            batch = batch.to(device)
            logits = run_after(model, prefix, batch).logits
            nll.append(summed_nll(logits[:, :-1], batch[:, 1:]).cpu())
            del logits  # freed before the next forward, not after it
    tokens = torch.full((len(windows),), windows.shape[1] - 1, dtype=torch.long)
    return WindowNLL(torch.cat(nll), tokens, time.perf_counter() - start)


def summed_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row summed NLL in float64, with log-softmax in at least float32 (bf16 logits lose
    too much precision for a reproducible perplexity)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return nll.view_as(targets).sum(dim=1, dtype=torch.float64)
