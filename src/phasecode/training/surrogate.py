"""Sigmoid surrogate gradient for the Heaviside step (Wu et al., 2018), used for θ and h.

Forward is the exact step, so every loss value reported during training is the true
conversion error; only the backward pass is smoothed (``training.dynamics``). The sigmoid's
width is tied to each step's output weight d(t): a step that moves the output by d(t) is
smoothed over a few d(t), which keeps one sharpness setting meaningful from the coarsest to
the finest step.
"""

from __future__ import annotations

import torch
from torch import Tensor


def slopes(weight: Tensor, sharpness: float = 4.0) -> Tensor:
    """k = sharpness / |d(t)| [S, T] (detached): each step's sigmoid slope."""
    return sharpness / weight.detach().abs().clamp_min(1e-12)


def sigmoid_slope(u: Tensor, k: Tensor) -> Tensor:
    """dσ(k·u)/du = k·σ(k·u)·(1 − σ(k·u)): the surrogate's dΘ(u)/du."""
    sig = torch.sigmoid(k * u)
    return k * sig * (1 - sig)
