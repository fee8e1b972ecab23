"""Choosing the prefix by measurement, on every model.

A prefix must do two things: take the massive activations away from the positions that will
be coded (the first token of a window is an attention sink, and so are the first occurrences
of a few delimiter tokens), and not change what the ANN predicts. Which token does both is a
property of the model, not of its tokenizer: Qwen2's GGUF reports ``<|endoftext|>`` as BOS,
but Qwen2 was never trained with it in front, and that prefix alone raises its perplexity by
half, while ``"\\n"`` lowers it. So every candidate is scored on calibration windows:

- ``loss``: the ANN's mean NLL on the windows' tokens after the prefix (the same tokens as
  without one), which must stay within ``LOSS_BUDGET`` of the plain ANN's, or below it;
- ``peak``: the largest |x| left at the down_proj inputs of the windows' positions (all
  layers and channels), which the choice minimises.

Candidates are the tokenizer's special tokens, ``"\\n"``, ``"."``, ``" "`` and the tokens the
plain model gives outlier activations in mid-text. Of those within budget, the lowest peak
wins (peaks within ``PEAK_TIE`` of it are a tie, broken by the lower loss); the prefix then
grows by mid-text outlier tokens while each cuts the peak by at least ``MIN_PEAK_GAIN``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from phasecode.calibration.observers import hooks
from phasecode.errors import PhasecodeError
from phasecode.inference.nll import summed_nll
from phasecode.inference.prefix import build_prefix, run_after
from phasecode.models.adapters import adapter_for

LOSS_BUDGET = 0.005  # relative rise of the ANN's loss a prefix may cost
MIN_PEAK_GAIN = 0.10  # a longer prefix must cut the remaining peak by this fraction
PEAK_TIE = 0.10  # peaks this close count as equal; the lower loss decides
MAX_PREFIX_TOKENS = 4
SELECTION_WINDOWS = 2  # calibration windows each candidate is scored on
OUTLIER_CANDIDATES = 3  # top mid-text outlier tokens tried as prefix tokens
SPECIAL_CANDIDATES = 4  # special tokens tried (BOS and EOS first)
DELIMITERS = ("\n", ".", " ")
OUTLIER_FACTOR = 20.0  # a position is an outlier above this multiple of the median peak


@dataclass(frozen=True)
class OutlierToken:
    """A token that had outlier activations, for reporting."""

    token_id: int
    text: str
    count: int  # positions where it was an outlier
    max_abs: float  # largest |x| at the down_proj inputs over those positions


def outlier_tokens(
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


class PeakTracker:
    """Forward pre-hooks keeping, per hooked module (layer) and position, the max |x| over
    channels; ``stacked()`` gives [modules, batch, seq_len]."""

    def __init__(self) -> None:
        self.peaks: dict[int, torch.Tensor] = {}

    def hook(self, index: int):
        def record(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            self.peaks[index] = args[0].detach().abs().amax(dim=-1).float().cpu()

        return record

    def stacked(self) -> torch.Tensor:
        return torch.stack([self.peaks[i] for i in sorted(self.peaks)])


@dataclass(frozen=True)
class PrefixTrial:
    """One candidate prefix, scored on the selection windows."""

    token_ids: tuple[int, ...]
    text: str
    loss: float  # mean NLL per predicted token
    peak: float  # max |x| at the down_proj inputs over the windows' positions
    accepted: bool  # loss within the budget


@dataclass(frozen=True)
class PrefixChoice:
    """The chosen prefix (possibly empty), with every trial that led to it."""

    token_ids: tuple[int, ...]
    plain: PrefixTrial
    trials: tuple[PrefixTrial, ...]
    outliers: tuple[OutlierToken, ...]
    reason: str
    plain_peaks: torch.Tensor  # [layers, windows, seq_len] of the plain model (not reported)
    source: str = "measured"  # or "cache": read back by ``prefix_cache``

    def report(self) -> dict:
        """For the artifact's report: why this prefix, with each candidate's loss and peak."""

        def row(trial: PrefixTrial) -> dict:
            return {
                **asdict(trial),
                "token_ids": list(trial.token_ids),
                "loss_ratio": trial.loss / self.plain.loss,
                "peak_ratio": trial.peak / self.plain.peak if self.plain.peak else 0.0,
            }

        return {
            "chosen": list(self.token_ids),
            "reason": self.reason,
            "source": self.source,
            "loss_budget": LOSS_BUDGET,
            "plain": row(self.plain),
            "candidates": [row(t) for t in self.trials],
            "outlier_tokens": [asdict(t) for t in self.outliers],
        }


@dataclass(frozen=True)
class PrefixRequest:
    """How a conversion gets its prefix: chosen by measurement (``auto``), none, a text, or
    token ids. Checked against the tokenizer and vocabulary before any work (``given_ids``)."""

    mode: Literal["auto", "none", "text", "ids"] = "auto"
    text: str = ""
    ids: tuple[int, ...] = ()

    def given_ids(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[int, ...]:
        """The ids of a ``text`` or ``ids`` request; one-line errors for what cannot work."""
        ids = self.ids
        if self.mode == "text":
            ids = tuple(tokenizer.encode(self.text, add_special_tokens=False))
            if not ids:
                raise PhasecodeError(f"the prefix text {self.text!r} tokenizes to nothing")
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if not ids or bad:
            raise PhasecodeError(f"prefix ids must be in 0..{vocab_size - 1}, got {list(ids)}")
        return ids


AUTO = PrefixRequest()  # the default: chosen by measurement
NO_PREFIX = PrefixRequest("none")


@torch.no_grad()
def measure_prefix(
    model: nn.Module, windows: torch.LongTensor, token_ids: Sequence[int]
) -> tuple[float, torch.Tensor]:
    """(mean NLL of the windows after the prefix, peaks [layers, n, seq_len] at the
    down_proj inputs: per layer and position, the max |x| over channels)."""
    adapter = adapter_for(model)
    prefix = build_prefix(model, token_ids) if token_ids else None
    tracker = PeakTracker()
    names = [adapter.layer_path(i, adapter.down) for i in range(adapter.num_layers(model))]
    device = next(model.parameters()).device
    windows = windows.to(device)
    with hooks(model, {name: tracker.hook(i) for i, name in enumerate(names)}):
        logits = run_after(model, prefix, windows).logits
    nll = summed_nll(logits[:, :-1], windows[:, 1:]).sum().item()
    return nll / (windows.numel() - len(windows)), tracker.stacked()


def prefix_candidates(
    tokenizer: PreTrainedTokenizerBase, outlier_ids: Sequence[int]
) -> list[tuple[int, ...]]:
    """Special tokens (BOS, EOS, then others), delimiters and outlier tokens, without repeats."""
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id, *tokenizer.all_special_ids]
    special = list(dict.fromkeys(i for i in special if i is not None))[:SPECIAL_CANDIDATES]
    delimiters = [tokenizer.encode(d, add_special_tokens=False) for d in DELIMITERS]
    singles = [(i,) for i in special] + [tuple(d) for d in delimiters if len(d) == 1]
    singles += [(i,) for i in outlier_ids]
    return list(dict.fromkeys(singles))


def choose_prefix(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    windows: torch.LongTensor,
    progress: bool = True,
) -> PrefixChoice:
    """Score every candidate on ``windows``; keep the lowest peak within the loss budget."""
    windows = windows[:SELECTION_WINDOWS]
    bar = tqdm(desc="prefix candidates", unit="prefix", disable=not progress)

    def trial(ids: tuple[int, ...]) -> tuple[PrefixTrial, torch.Tensor]:
        loss, peaks = measure_prefix(model, windows, ids)
        bar.update()
        text = tokenizer.decode(list(ids)) if ids else ""
        return PrefixTrial(ids, text, loss, peaks.max().item(), True), peaks

    plain, plain_peaks = trial(())
    # mid-text outliers of the plain model (position 0 is a sink whatever its token)
    mid_ids, mid_peaks = windows[:, 1:].flatten(), plain_peaks.amax(0)[:, 1:].flatten()
    threshold = OUTLIER_FACTOR * mid_peaks.median().item()
    outliers = outlier_tokens(tokenizer, mid_ids, mid_peaks, threshold)
    candidates = prefix_candidates(tokenizer, [t.token_id for t in outliers[:OUTLIER_CANDIDATES]])
    limit = plain.loss * (1 + LOSS_BUDGET)

    def scored(ids: tuple[int, ...]) -> PrefixTrial:
        t, _ = trial(ids)
        return PrefixTrial(t.token_ids, t.text, t.loss, t.peak, t.loss <= limit)

    trials = [scored(ids) for ids in candidates]
    best = _best(trials)
    if best is None or best.peak >= plain.peak:
        bar.close()
        why = "no candidate kept the loss within budget" if best is None else "no peak gain"
        return PrefixChoice(
            (), plain, tuple(trials), tuple(outliers), f"no prefix: {why}", plain_peaks
        )
    accepted = sum(t.accepted for t in trials)
    reason = (
        f"lowest loss among the lowest peaks (within {PEAK_TIE:.0%}), {accepted} of "
        f"{len(trials)} candidates within budget"
    )
    # a longer prefix only helps with tokens that are outliers mid-text (their first
    # occurrence carries the massive activation); the sink itself is taken by one token
    extensions = [(t.token_id,) for t in outliers[:OUTLIER_CANDIDATES]]
    while len(best.token_ids) < MAX_PREFIX_TOKENS:
        extended = [scored(best.token_ids + i) for i in extensions if i[0] not in best.token_ids]
        trials += extended
        better = _best([t for t in extended if t.peak < (1 - MIN_PEAK_GAIN) * best.peak])
        if better is None:
            break
        best = better
        reason = f"extended by outlier tokens while the peak fell by >= {MIN_PEAK_GAIN:.0%}"
    bar.close()
    return PrefixChoice(best.token_ids, plain, tuple(trials), tuple(outliers), reason, plain_peaks)


def _best(trials: list[PrefixTrial]) -> PrefixTrial | None:
    """Among the trials within budget, the lowest loss of those whose peak is within
    ``PEAK_TIE`` of the lowest peak (peaks that close are the same for the neurons)."""
    accepted = [t for t in trials if t.accepted]
    if not accepted:
        return None
    lowest = min(t.peak for t in accepted)
    return min((t for t in accepted if t.peak <= (1 + PEAK_TIE) * lowest), key=lambda t: t.loss)
