"""The prefix choice, remembered per model.

The choice is a property of the model's weights and of the selection windows, and measuring
it costs about seven forwards (13 s of SmolLM2-135M's 34 s calibration on two CPU cores). A
conversion of a model already measured, at another T, code or budget, reads the choice back.

The key holds everything the measurement depends on: the weights' fingerprint
(``models.loading.model_fingerprint``), the selection windows' tokens, the candidates the
tokenizer yields, the choice rules' constants, the device type, dtype and attention
implementation, and torch's version. Entries are JSON under $PHASECODE_CACHE/prefix-choice/.
``PHASECODE_PREFIX_CACHE=0`` measures every time; an entry that cannot be read is measured
again and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import suppress
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from phasecode.artifacts import write_json_atomic
from phasecode.errors import PhasecodeError
from phasecode.inference import prefix_choice
from phasecode.inference.prefix_choice import (
    OutlierToken,
    PrefixChoice,
    PrefixTrial,
    choose_prefix,
    prefix_candidates,
)
from phasecode.models.loading import cache_dir, model_fingerprint

FORMAT = 1  # bump when the stored fields or the choice's rules change meaning
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


def enabled() -> bool:
    """Whether choices are remembered (PHASECODE_PREFIX_CACHE is not "0")."""
    return os.environ.get("PHASECODE_PREFIX_CACHE", "1") != "0"


def choose_prefix_cached(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    windows: torch.LongTensor,
    progress: bool = True,
) -> PrefixChoice:
    """``choose_prefix``, or its earlier result for the same model, windows and rules."""
    if not enabled():
        return choose_prefix(model, tokenizer, windows, progress)
    path = cache_dir() / "prefix-choice" / f"{choice_key(model, tokenizer, windows)}.json"
    stored = _read(path)
    if stored is not None:
        return stored
    choice = choose_prefix(model, tokenizer, windows, progress)
    with suppress(PhasecodeError):  # a read-only cache costs the next conversion a measurement
        write_json_atomic(path, _encode(choice))
    return choice


def choice_key(model: nn.Module, tokenizer: PreTrainedTokenizerBase, windows: torch.Tensor) -> str:
    """sha256 of everything the choice depends on (module docstring)."""
    parameter = next(model.parameters())
    selected = windows[: prefix_choice.SELECTION_WINDOWS].to("cpu", torch.int64).contiguous()
    parts = {
        "format": FORMAT,
        "fingerprint": model_fingerprint(model),
        "windows": hashlib.sha256(selected.numpy().tobytes()).hexdigest(),
        "shape": list(selected.shape),
        "candidates": prefix_candidates(tokenizer, []),
        "rules": {name: getattr(prefix_choice, name) for name in RULES},
        "device": parameter.device.type,
        "dtype": str(parameter.dtype),
        "attention": getattr(model.config, "_attn_implementation", None),
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _encode(choice: PrefixChoice) -> dict:
    return {
        "format": FORMAT,
        "token_ids": list(choice.token_ids),
        "plain": asdict(choice.plain),
        "trials": [asdict(t) for t in choice.trials],
        "outliers": [asdict(t) for t in choice.outliers],
        "reason": choice.reason,
        "plain_peaks": choice.plain_peaks.tolist(),
    }


def _trial(row: dict) -> PrefixTrial:
    return replace(PrefixTrial(**row), token_ids=tuple(row["token_ids"]))


def _read(path: Path) -> PrefixChoice | None:
    """The stored choice, or None when there is none or it cannot be read as one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            return None
        return PrefixChoice(
            tuple(data["token_ids"]),
            _trial(data["plain"]),
            tuple(_trial(t) for t in data["trials"]),
            tuple(OutlierToken(**t) for t in data["outliers"]),
            data["reason"],
            torch.tensor(data["plain_peaks"], dtype=torch.float32),
            source="cache",
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
