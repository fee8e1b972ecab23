"""Balancing the two operands of SiLU(gate)·up before they are coded.

The product a·b of the SiLU output and the up projection is exact in the spiking network
(Eq. 55), but each operand is coded by its own neuron, and a few channels carry values far
larger than the rest, so a per-site neuron spends its levels on them. Per channel c we move
scale between the operands, a' = a / s_c and b' = b · s_c with s_c = √(max|a_c| / max|b_c|)
(SmoothQuant-style, α = 1/2): the product is unchanged, s is folded into up_proj's output
rows, and SiLU(·)/s_c stays an element-wise function. Not in the paper: on SmolLM2-135M the
SiLU operand is the site whose coding costs the most perplexity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from phasecode.models.adapters import adapter_for
from phasecode.models.sites import SiteKey


class ChannelPeaks:
    """A site handler recording max |x| per channel at the SiLU and up sites."""

    def __init__(self, layers: int):
        self.silu: list[Tensor | None] = [None] * layers
        self.up: list[Tensor | None] = [None] * layers

    def __call__(self, site: str, x: Tensor) -> Tensor:
        key = SiteKey.parse(site)
        if key.kind in ("silu", "up"):
            peaks = getattr(self, key.kind)
            index = key.layer
            current = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).float()
            old = peaks[index]
            peaks[index] = current if old is None else torch.maximum(old, current)
        return x

    def scales(self, alpha: float = 0.5) -> Tensor:
        """s [layers, channels] = max|a|^α / max|b|^(1−α), guarded against dead channels."""
        a = torch.stack(self.silu).clamp_min(1e-6)
        b = torch.stack(self.up).clamp_min(1e-6)
        return (a.pow(alpha) / b.pow(1 - alpha)).clamp(1e-3, 1e3)


def fold_up_scales(model: nn.Module, scales: Tensor) -> None:
    """up_proj's output channel c multiplied by s_c in every layer (weights and bias)."""
    adapter = adapter_for(model)
    with torch.no_grad():
        for i, layer in enumerate(adapter.decoder_layers(model)):
            up = adapter.mlp_projections(layer)[1]
            s = scales[i].to(up.weight.device, up.weight.dtype)
            up.weight.mul_(s[:, None])
            if up.bias is not None:
                up.bias.mul_(s)
