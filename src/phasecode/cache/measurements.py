"""Measurements remembered across processes.

Some measurements are pure functions of a model, their inputs and the code that made them: the
prefix choice (``inference/prefix_cache.py``), an ANN's perplexity on given windows
(``inference/score_cache.py``), the prepared ANN's zero-shot accuracy
(``evaluation/tasks/ann_scores.py``). Measuring them again costs whole forwards; a later run
reads them back.

Each kind lives under $PHASECODE_CACHE/<kind>/ as JSON entries named by a digest of their
inputs: the measurement's own (the model's fingerprint, its windows, ...) and the provenance
record (``provenance``: the digest of the code the kind depends on, library versions, the
device and its capability). An entry stores those inputs, the value and a checksum of both;
one that is torn, edited, of another format or made for other inputs is measured again and
rewritten, never used. While one process measures an entry, another that needs it waits for
it (``locks.building``) and reads it. An environment switch set to "0" turns a kind off, and
a cache that cannot be written costs only the measurement.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from phasecode.artifacts import write_json_atomic
from phasecode.cache.digests import json_digest
from phasecode.cache.fingerprint import model_fingerprint
from phasecode.cache.locks import building
from phasecode.cache.provenance import provenance
from phasecode.cache.root import kind_dir, writable
from phasecode.errors import PhasecodeError

T = TypeVar("T")


@dataclass(frozen=True)
class MeasurementCache:
    """One kind of remembered measurement: its folder, switch, stored format, what its entries
    are for, and the source (package-relative paths) its measurements depend on."""

    kind: str  # folder under $PHASECODE_CACHE
    switch: str  # environment variable; "0" measures every time
    format: int  # bump when the stored fields or what they mean change
    purpose: str  # one line for `phasecode cache ls`
    code: tuple[str, ...] = ()  # empty: all of phasecode's source

    def enabled(self) -> bool:
        return os.environ.get(self.switch, "1") != "0"

    def inputs(self, parts: dict, device: torch.device | str | None = None) -> dict:
        """Everything an entry depends on: ``parts`` and the provenance record."""
        return parts | {"format": self.format, "provenance": provenance(device, self.code)}

    def path(self, inputs: dict) -> Path:
        return kind_dir(self.kind) / f"{json_digest(inputs)[:24]}.json"

    def read(self, inputs: dict) -> dict | None:
        """The stored value for ``inputs``, or None: no entry, or one that is not a whole,
        unedited entry of this format made for exactly these inputs."""
        path = self.path(inputs)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("format") != self.format:
            return None
        if entry.get("inputs") != json.loads(json.dumps(inputs, default=str)):
            return None
        if entry.get("checksum") != _checksum(entry.get("inputs"), entry.get("value")):
            return None
        with suppress(OSError):
            os.utime(path)  # last used: what `phasecode cache prune` evicts by
        value = entry.get("value")
        return value if isinstance(value, dict) else None

    def write(self, inputs: dict, value: dict) -> None:
        """Store ``value`` atomically with its inputs; a cache that cannot be written is left."""
        if not writable():
            return
        inputs = json.loads(json.dumps(inputs, default=str))
        entry = {
            "format": self.format,
            "kind": self.kind,
            "purpose": self.purpose,
            "created": time.time(),
            "inputs": inputs,
            "value": value,
            "checksum": _checksum(inputs, value),
        }
        with suppress(PhasecodeError):
            write_json_atomic(self.path(inputs), entry)

    def remembered(
        self,
        parts: Callable[[], dict],
        measure: Callable[[], T],
        encode: Callable[[T], dict],
        decode: Callable[[dict], T | None],
        device: torch.device | str | None = None,
    ) -> tuple[T, str]:
        """``measure()``, or the value stored for the same inputs; with "measured" or "cache".
        ``decode`` gives None for a value it cannot read, which is measured and rewritten;
        ``parts`` is only computed when the kind is on. A measurement another process is
        making is waited for, then read."""
        if not self.enabled():
            return measure(), "measured"
        inputs = self.inputs(parts(), device)
        value = self._decoded(inputs, decode)
        if value is not None:
            return value, "cache"
        with building(self.path(inputs), f"a {self.kind} entry"):
            value = self._decoded(inputs, decode)  # measured while this process waited
            if value is not None:
                return value, "cache"
            value = measure()
            self.write(inputs, encode(value))
        return value, "measured"

    def _decoded(self, inputs: dict, decode: Callable[[dict], T | None]) -> T | None:
        stored = self.read(inputs)
        return None if stored is None else decode(stored)


def model_facts(model: nn.Module) -> dict:
    """What a measurement through ``model`` depends on besides its inputs: the weights'
    fingerprint (a prepared model's: its base model's, the preparation being the caller's
    to name), their dtype and the attention implementation. The device is the provenance's."""
    parameter = next(model.parameters())
    base = getattr(model, "phasecode_base_fingerprint", None)
    prepared = getattr(model, "phasecode_prepared", False)
    return {
        "fingerprint": base if prepared and base else model_fingerprint(model),
        "dtype": str(parameter.dtype),
        "attention": getattr(model.config, "_attn_implementation", None),
    }


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _checksum(inputs: object, value: object) -> str:
    return json_digest({"inputs": inputs, "value": value})
