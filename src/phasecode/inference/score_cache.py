"""An ANN's perplexity on given windows, remembered.

Every evaluation of a converted model repeats the same baselines: ``run`` scores the plain
ANN and the prepared ANN (rotated, after the prefix) on its windows each time, and ``eval``
or ``energy`` of every artifact of one model scores the plain ANN again. Those scores depend
only on the weights, the windows, the prefix, the batch size (other GEMM shapes round
differently), the dtype and attention implementation, and the provenance record (the code of
inference, models and conversion; library versions; the device and its capability), so a
later evaluation reads them back. The spiking model is always measured.

``PHASECODE_SCORE_CACHE=0`` measures every time. Entries are JSON under
$PHASECODE_CACHE/window-scores/ (``cache.measurements``).
"""

from __future__ import annotations

import torch
from torch import nn

from phasecode.cache.digests import tensor_digest
from phasecode.cache.measurements import MeasurementCache, model_device, model_facts
from phasecode.inference.nll import WindowNLL, perplexity
from phasecode.inference.prefix import Prefix

SCORES = MeasurementCache(
    "window-scores",
    "PHASECODE_SCORE_CACHE",
    format=2,
    purpose="an ANN's perplexity on given windows (run, eval, energy)",
    code=("inference", "models", "conversion"),
)
PLAIN = {"model": "plain"}  # the ANN as loaded, with no surgery installed


def perplexity_cached(
    model: nn.Module,
    windows: torch.LongTensor,
    prefix: Prefix | None,
    batch_size: int,
    progress: bool,
    forward: dict,
) -> WindowNLL:
    """``perplexity``, or its earlier result for the same model and windows. ``forward`` says
    what the forward computes besides the weights (``PLAIN``, or a prepared ANN's rotations
    and balancing: ``SpikingModel.analog_identity``); it must not be a spiking surgery."""
    scores, _ = SCORES.remembered(
        lambda: score_inputs(model, windows, prefix, batch_size, forward),
        lambda: perplexity(model, windows, prefix, batch_size, progress),
        _encode,
        _decode,
        model_device(model),
    )
    return scores


def score_inputs(
    model: nn.Module,
    windows: torch.Tensor,
    prefix: Prefix | None,
    batch_size: int,
    forward: dict,
) -> dict:
    """What the scores depend on besides the provenance (module docstring)."""
    return model_facts(model) | {
        "windows": tensor_digest(windows),
        "prefix": None if prefix is None else list(prefix.token_ids),
        "batch_size": batch_size,
        "forward": forward,
    }


def _encode(scores: WindowNLL) -> dict:
    return {"nll": scores.nll.tolist(), "tokens": scores.tokens.tolist(), "seconds": scores.seconds}


def _decode(data: dict) -> WindowNLL | None:
    """The stored scores, or None when they cannot be read as scores."""
    try:
        nll = torch.tensor(data["nll"], dtype=torch.float64)
        tokens = torch.tensor(data["tokens"], dtype=torch.long)
        if nll.dim() != 1 or nll.shape != tokens.shape:
            return None
        return WindowNLL(nll, tokens, float(data["seconds"]), source="cache")
    except (KeyError, TypeError, ValueError, RuntimeError):
        return None
