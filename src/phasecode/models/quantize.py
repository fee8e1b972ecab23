"""Weight-only fake quantization of the decoder linears (the paper's Table 8).

Per output channel c, symmetric, round to nearest: with q = 2^(b−1) − 1 levels each side and
step Δ_c = max_j |W_cj| / q, every weight becomes Δ_c · clamp(round(W_cj / Δ_c), −q, q). The
weights are replaced by these dequantized values, so the float model computes exactly what a
W8 / W4 integer kernel with per-channel scales would; every weight moves by at most Δ_c / 2.

Only the seven decoder linears (q, k, v, o, gate, up, down) are quantized, which is the usual
weight-only setting (GPTQ, QuaRot): the embedding and ``lm_head`` stay in full precision, and
so do biases (Qwen2's q/k/v). In a conversion it runs after the rotation, so the rotated
weights — the ones the spiking model computes with — are what gets quantized, and before
calibration, so the neurons are fitted to the activations of the quantized model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from phasecode.errors import PhasecodeError
from phasecode.models.adapters import adapter_for

WEIGHT_BITS = (8, 4)


def check_weight_bits(bits: int | None) -> int | None:
    """``bits`` if it is a supported width (or None: full precision), else a user error."""
    if bits is not None and (isinstance(bits, bool) or bits not in WEIGHT_BITS):
        choices = " or ".join(map(str, WEIGHT_BITS))
        raise PhasecodeError(f"weight bits must be {choices}, got {bits!r}")
    return bits


def quantize_rows(weight: Tensor, bits: int) -> Tensor:
    """Per-row symmetric round-to-nearest, dequantized, in the weight's dtype (computed in
    float64 so the only float rounding is the final cast)."""
    levels = 2 ** (bits - 1) - 1
    w = weight.detach().to(torch.float64)
    step = w.abs().amax(dim=1, keepdim=True) / levels
    step = torch.where(step > 0, step, torch.ones_like(step))  # an all-zero row stays zero
    return ((w / step).round().clamp(-levels, levels) * step).to(weight.dtype)


def decoder_linears(model: nn.Module) -> list[nn.Linear]:
    """Every linear of every decoder layer (fused projections once; quantization is per
    output row, so a fused linear quantizes as its parts would)."""
    adapter = adapter_for(model)
    return adapter.linears(model, adapter.decoder_linears())


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int) -> None:
    """Replace every decoder linear's weight by its ``bits``-bit fake-quantized value, in place."""
    check_weight_bits(bits)
    for linear in decoder_linears(model):
        linear.weight.copy_(quantize_rows(linear.weight, bits))
