"""The prefix choice, remembered per model.

The choice is a property of the model's weights and of the selection windows, and measuring
it costs about seven forwards (13 s of SmolLM2-135M's 34 s calibration on two CPU cores). A
conversion of a model already measured, at another T, code or budget, reads the choice back.

The key holds everything the measurement depends on: the model's fingerprint
(``cache.fingerprint``), the selection windows' tokens, the candidates the tokenizer yields,
the choice rules' constants, the dtype and attention implementation, and the provenance record
(the code of the choice, the window scoring and the hooks; library versions; the device).
Entries are JSON under $PHASECODE_CACHE/prefix-choice/ (``cache.measurements``);
``PHASECODE_PREFIX_CACHE=0`` measures every time.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from phasecode.cache.digests import tensor_digest
from phasecode.cache.measurements import MeasurementCache, model_device, model_facts
from phasecode.inference import prefix_choice
from phasecode.inference.prefix_choice import (
    OutlierToken,
    PrefixChoice,
    PrefixTrial,
    choose_prefix,
    prefix_candidates,
)

CHOICES = MeasurementCache(
    "prefix-choice",
    "PHASECODE_PREFIX_CACHE",
    format=2,
    purpose="the prefix a conversion chose for a model by measurement",
    code=("inference", "calibration/observers.py", "models/adapters"),
)
RULES = (
    "LOSS_BUDGET",
    "MIN_PEAK_GAIN",
    "PEAK_TIE",
    "MAX_PREFIX_TOKENS",
    "SELECTION_WINDOWS",
    "OUTLIER_CANDIDATES",
    "SPECIAL_CANDIDATES",
    "DELIMITERS",
    "OUTLIER_FACTOR",
)


def choose_prefix_cached(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    windows: torch.LongTensor,
    progress: bool = True,
) -> PrefixChoice:
    """``choose_prefix``, or its earlier result for the same model, windows and rules."""
    choice, _ = CHOICES.remembered(
        lambda: choice_inputs(model, tokenizer, windows),
        lambda: choose_prefix(model, tokenizer, windows, progress),
        _encode,
        _decode,
        model_device(model),
    )
    return choice


def choice_inputs(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, windows: torch.Tensor
) -> dict:
    """What the choice depends on besides the provenance (module docstring)."""
    return model_facts(model) | {
        "windows": tensor_digest(windows[: prefix_choice.SELECTION_WINDOWS]),
        "candidates": prefix_candidates(tokenizer, []),
        "rules": {name: getattr(prefix_choice, name) for name in RULES},
    }


def _encode(choice: PrefixChoice) -> dict:
    return {
        "token_ids": list(choice.token_ids),
        "plain": asdict(choice.plain),
        "trials": [asdict(t) for t in choice.trials],
        "outliers": [asdict(t) for t in choice.outliers],
        "reason": choice.reason,
        "plain_peaks": choice.plain_peaks.tolist(),
    }


def _trial(row: dict) -> PrefixTrial:
    return replace(PrefixTrial(**row), token_ids=tuple(row["token_ids"]))


def _decode(data: dict) -> PrefixChoice | None:
    """The stored choice, or None when it cannot be read as one."""
    try:
        return PrefixChoice(
            tuple(data["token_ids"]),
            _trial(data["plain"]),
            tuple(_trial(t) for t in data["trials"]),
            tuple(OutlierToken(**t) for t in data["outliers"]),
            data["reason"],
            torch.tensor(data["plain_peaks"], dtype=torch.float32),
            source="cache",
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
