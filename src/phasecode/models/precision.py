"""Running a model in float64 end to end, for exactness checks.

transformers' RMSNorms normalise in float32 (Gemma's also apply the gain there), which for a
float64 model is a downcast that bounds every float64 comparison at ~1e-7; ``to_float64``
casts the model and gives each RMSNorm of this instance a forward in its input's dtype: the
same formula, with the gain convention the model's adapter names (weight, or 1 + weight).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from phasecode.models.adapters import Adapter, adapter_for


def _rms_norm(adapter: Adapter, norm: nn.Module, hidden: Tensor) -> Tensor:
    eps = getattr(norm, "variance_epsilon", None)
    eps = norm.eps if eps is None else eps
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return adapter.norm_gain(norm) * (hidden * torch.rsqrt(variance + eps))


def to_float64(model: nn.Module) -> nn.Module:
    """Cast ``model`` to float64 in place, with float64 RMSNorms; returns it."""
    adapter = adapter_for(model)
    model.to(torch.float64)
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = partial(_rms_norm, adapter, module)
    return model
