"""Perplexity on non-overlapping token windows, following the GPTQ protocol.

GPTQ-style numbers join a corpus's rows with "\n\n", tokenize the result once, cut it into
windows of seq_len tokens and score each window on its own: the logits at positions 0..L-2
predict tokens 1..L-1. The ANN and the spiking model are scored on the very same windows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from phasecode.calibration.text import data_dir, read_texts
from phasecode.errors import PhasecodeError
from phasecode.evaluation.prefix import Prefix

WIKITEXT2 = Path("wikitext2") / "wiki.test.raw"
C4 = Path("c4") / "c4_validation_sample.jsonl"
_ROW_SEPARATOR = "\n\n"


def load_corpus(name_or_path: str) -> str:
    """The evaluation text: "wikitext2", "c4", or a .jsonl / plain text file.

    "wikitext2" is the WikiText-2 raw test split exactly as GPTQ builds it. "c4" joins the
    documents of the staged C4 validation sample; that is C4-like text but not GPTQ's C4
    protocol, which needs the first documents of validation shard 0 (see SOURCES.md).
    """
    if name_or_path == "wikitext2":
        text = _ROW_SEPARATOR.join(wikitext_rows(_existing(data_dir() / WIKITEXT2)))
    else:
        path = data_dir() / C4 if name_or_path == "c4" else Path(name_or_path).expanduser()
        text = _ROW_SEPARATOR.join(read_texts(_existing(path)))
    if not text.strip():
        raise PhasecodeError(f"corpus {name_or_path!r} has no text")
    return text


def wikitext_rows(path: Path) -> list[str]:
    """The rows HF's wikitext loader yields: one per line of the file, keeping its "\n";
    whitespace-only lines become ""."""
    with open(path, encoding="utf-8") as lines:
        return [line if line.strip() else "" for line in lines]


def _existing(path: Path) -> Path:
    """The path itself, or an error naming it (read_texts would call it a calibration file)."""
    if not path.is_file():
        raise PhasecodeError(f"corpus file not found: {path}")
    return path


def token_windows(
    tokenizer: PreTrainedTokenizerBase, text: str, seq_len: int, limit: int | None = None
) -> torch.LongTensor:
    """[n, seq_len] non-overlapping windows of the text tokenized once, the first `limit` of them.

    No special tokens are added (so no window starts with BOS unless the text does), which is
    also what lets a prefix that starts with BOS go in front of any window.
    """
    if seq_len < 2 or (limit is not None and limit < 1):
        raise PhasecodeError(f"need seq_len >= 2 and limit >= 1, got {seq_len} and {limit}")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    n = len(ids) // seq_len if limit is None else min(limit, len(ids) // seq_len)
    if n == 0:
        raise PhasecodeError(f"text has {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


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

    @property
    def ppl(self) -> float:
        """exp of the mean NLL over all predicted tokens (not the mean of window perplexities)."""
        return math.exp(self.nll.sum().item() / self.tokens.sum().item())


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
            cache = prefix.cache_for(len(batch)) if prefix is not None else None
            logits = model(input_ids=batch, cache=cache, use_cache=cache is not None).logits
            nll.append(_summed_nll(logits[:, :-1], batch[:, 1:]).cpu())
            del logits, cache  # freed before the next forward, not after it
    tokens = torch.full((len(windows),), windows.shape[1] - 1, dtype=torch.long)
    return WindowNLL(torch.cat(nll), tokens, time.perf_counter() - start)


def _summed_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row summed NLL in float64, with log-softmax in at least float32 (bf16 logits lose
    too much precision for a reproducible perplexity)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return nll.view_as(targets).sum(dim=1, dtype=torch.float64)
