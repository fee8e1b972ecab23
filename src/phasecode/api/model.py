"""Load a base model and convert it: the public entry points ``phasecode.load_model`` and
``phasecode.convert`` (``phasecode.load`` is ``SpikingModelForCausalLM.from_pretrained``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from phasecode.calibration.text import read_texts
from phasecode.conversion.causal_lm import SpikingModelForCausalLM
from phasecode.conversion.config import ConversionConfig
from phasecode.conversion.convert import calibrate, fit_spiking
from phasecode.conversion.reconstruct import reconstruct
from phasecode.errors import PhasecodeError
from phasecode.models.devices import resolve_device, resolve_dtype
from phasecode.models.loading import base_record, check_fits
from phasecode.models.loading import load_model as load_base
from phasecode.models.resolve import DEFAULT_MODEL, model_reference
from phasecode.simulation.budget import budget_strategy, reconstruct_within_budget
from phasecode.simulation.energy import load_costs

# what a calibration argument may be: a file, documents, or a datasets.Dataset (its "text")
Calibration = str | Path | Iterable[str] | Any | None


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    device_map: str | None = None,
):
    """(model, tokenizer) for ``name``: ``smollm2-135m`` (bundled), a model directory, a
    ``.gguf`` file or a hub id, on ``device`` (auto: a GPU if there is one) in ``dtype``.
    Too large for the device, missing or unreadable: a ``PhasecodeError`` before loading."""
    where = resolve_device(str(device))
    dtype = resolve_dtype(dtype, where) if isinstance(dtype, str) else dtype
    check_fits(name, dtype, where, device_map)
    model, tokenizer = load_base(name, dtype=dtype, device=where, device_map=device_map)
    model.phasecode_reference = model_reference(name)  # what an artifact records as its base
    return model, tokenizer


def convert(
    model: nn.Module,
    tokenizer,
    config: ConversionConfig | Mapping | str | Path | None = None,
    calibration: Calibration = None,
    progress: bool = True,
) -> SpikingModelForCausalLM:
    """Convert ``model`` into a spiking LLM and return it as a transformers causal LM.

    ``model`` becomes the spiking model's base: it is rotated and changed in place (as
    optimum-quanto's ``quantize`` does), so use the returned model from here on; its record
    (name, fingerprint, dtype) is taken first, so ``save_pretrained`` always writes an
    artifact that loads. ``config``: a ``ConversionConfig``, a dict of its fields or a recipe
    file (.yaml/.json); None: the defaults. ``calibration``: None (the bundled C4 sample), a
    .jsonl/.txt file, a list of documents or a ``datasets.Dataset`` with a ``text`` column.
    """
    if isinstance(model, SpikingModelForCausalLM) or getattr(model, "phasecode_prepared", False):
        raise PhasecodeError("this model is already converted: load its base model afresh")
    config = as_config(config)
    texts = calibration_texts(calibration)
    budget = config.energy_budget_settings()
    if budget is not None:
        load_costs(budget.costs)  # a bad cost file fails before any work
    reference = getattr(model, "phasecode_reference", None) or _reference_of(model)
    base = base_record(reference, model)
    calibrated = calibrate(
        model,
        tokenizer,
        config.sampling_settings(),
        progress=progress,
        texts=texts,
        **config.preparation(),
    )
    spiking = fit_spiking(calibrated, config.fit_settings(), progress, budget_strategy(budget))
    if config.reconstruct != "none" and budget is not None:
        reconstruct_within_budget(calibrated, spiking, config.reconstruct, budget, progress)
    elif config.reconstruct != "none":
        record = reconstruct(calibrated, spiking, config.reconstruct, progress)
        spiking.report["reconstruction"] = record
    spiking.report["config"] = config.to_dict()
    return SpikingModelForCausalLM(spiking, base)


def as_config(config: ConversionConfig | Mapping | str | Path | None) -> ConversionConfig:
    if config is None:
        return ConversionConfig()
    if isinstance(config, ConversionConfig):
        return config
    if isinstance(config, Mapping):
        return ConversionConfig.from_dict(config)
    if isinstance(config, (str, Path)):
        return ConversionConfig.load(config)
    raise PhasecodeError(
        f"config must be a ConversionConfig, a dict or a recipe file, got {type(config).__name__}"
    )


def calibration_texts(calibration: Calibration) -> list[str]:
    """The calibration documents, from any of the forms ``convert`` takes."""
    if calibration is None or isinstance(calibration, (str, Path)):
        return read_texts(calibration)
    if hasattr(calibration, "column_names"):  # a datasets.Dataset
        if "text" not in calibration.column_names:
            raise PhasecodeError(
                f"the calibration dataset has no 'text' column (it has {calibration.column_names})"
            )
        calibration = calibration["text"]
    texts = list(calibration)
    if not all(isinstance(text, str) for text in texts):
        raise PhasecodeError("calibration documents must be strings")
    if not any(text.strip() for text in texts):
        raise PhasecodeError("the calibration documents hold no text")
    return texts


def _reference_of(model: nn.Module) -> str | None:
    """Where a model not loaded by ``load_model`` came from: its local directory or hub id
    (None for a model built in memory: then pass it to ``load(..., model=…)``)."""
    name = getattr(model, "name_or_path", "") or ""
    return model_reference(name) if name else None
