"""Sigmoid surrogate gradient for the Heaviside step (Wu et al., 2018), used for θ and h.

Forward is the exact step, so every loss value reported during training is the true
conversion error; only the backward pass is smoothed. The sigmoid's width is tied to each
step's output weight d(t): a step that moves the output by d(t) is smoothed over a few d(t),
which keeps one sharpness setting meaningful from the coarsest to the finest step.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _SigmoidStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, sharpness: Tensor) -> Tensor:
        ctx.save_for_backward(u, sharpness)
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        u, k = ctx.saved_tensors
        sig = torch.sigmoid(k * u)
        return grad * k * sig * (1 - sig), None


class SigmoidSurrogate:
    """Step function for ``fire_steps``: exact forward, sigmoid-derivative backward."""

    def __init__(self, width: Tensor, sharpness: float = 4.0):
        # width: [S, T] (detached d(t)); k = sharpness / width
        self.k = (sharpness / width.detach().abs().clamp_min(1e-12)).T.contiguous()

    def __call__(self, u: Tensor, step: int) -> Tensor:
        k = self.k[step].reshape((-1,) + (1,) * (u.dim() - 1))
        return _SigmoidStep.apply(u, k)
