"""Measurements remembered across processes.

Some measurements are pure functions of a model's weights, their inputs and the rules that
made them: the prefix choice (``inference/prefix_cache.py``), an ANN's perplexity on given
windows (``inference/score_cache.py``). Measuring them again costs whole forwards over the
data; a later conversion or evaluation of the same model reads them back.

Each kind lives under $PHASECODE_CACHE/<kind>/ as JSON files named by a digest of everything
the measurement depends on. An environment switch set to "0" turns a kind off. An entry that
cannot be read is measured again and rewritten; a cache that cannot be written costs only
the next measurement.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from phasecode.artifacts import write_json_atomic
from phasecode.errors import PhasecodeError
from phasecode.models.loading import cache_dir, model_fingerprint

T = TypeVar("T")


@dataclass(frozen=True)
class MeasurementCache:
    """One kind of remembered measurement: its folder, switch and stored format."""

    kind: str  # folder under $PHASECODE_CACHE
    switch: str  # environment variable; "0" measures every time
    format: int  # bump when the stored fields or what they mean change

    def enabled(self) -> bool:
        return os.environ.get(self.switch, "1") != "0"

    def key(self, parts: dict) -> str:
        """sha256 of the JSON of ``parts`` (with the format): the entry's file name."""
        text = json.dumps(parts | {"format": self.format}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return cache_dir() / self.kind / f"{key}.json"

    def read(self, key: str) -> dict | None:
        """The stored entry, or None when there is none or it is not this format's JSON."""
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == self.format else None

    def write(self, key: str, data: dict) -> None:
        """Store ``data`` atomically; a cache that cannot be written is left as it is."""
        with suppress(PhasecodeError):
            write_json_atomic(self.path(key), data | {"format": self.format})

    def remembered(
        self,
        key: Callable[[], str],
        measure: Callable[[], T],
        encode: Callable[[T], dict],
        decode: Callable[[dict], T | None],
    ) -> tuple[T, str]:
        """``measure()``, or the value stored under ``key()``; with "measured" or "cache".
        ``decode`` gives None for an entry it cannot read, which is measured and rewritten;
        ``key`` is only computed when the kind is on."""
        if not self.enabled():
            return measure(), "measured"
        name = key()
        stored = self.read(name)
        value = None if stored is None else decode(stored)
        if value is not None:
            return value, "cache"
        value = measure()
        self.write(name, encode(value))
        return value, "measured"


def model_facts(model: nn.Module) -> dict:
    """What a measurement through ``model`` depends on besides its inputs: the weights'
    fingerprint, where and in what dtype they are, the attention implementation, torch."""
    parameter = next(model.parameters())
    return {
        "fingerprint": model_fingerprint(model),
        "device": parameter.device.type,
        "dtype": str(parameter.dtype),
        "attention": getattr(model.config, "_attn_implementation", None),
        "torch": torch.__version__,
    }


def tensor_digest(tensor: torch.Tensor) -> dict:
    """A tensor's shape, dtype and the sha256 of its bytes (token windows, scales)."""
    values = tensor.detach().to("cpu").contiguous()
    data = values.flatten().view(torch.uint8).numpy().tobytes()
    return {
        "shape": list(values.shape),
        "dtype": str(values.dtype),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
