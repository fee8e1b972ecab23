"""What every neuron fit minimises: a site's squared coding error, per sample optionally
weighted (the Fisher objective's w(x) = E[g² | x], ``conversion.sensitivity``), plus optionally
κ·(mean error)² for sites whose errors add up coherently downstream.

Attention probabilities are the case: a row's output Σ_j p̂_j·v_j sums ~L coded
probabilities, so a bias b in them moves it by ~L·b·v̄ while independent errors only grow as
√L. Rounding to a T-step grid zeroes every probability below half the finest level, and at
T=6 that biases SmolLM2's coded probabilities by −6 % of their mass; the MSE-optimal neuron
accepts it because each zeroed value is individually tiny."""

from __future__ import annotations

from torch import Tensor


def squared_error(values: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Per-site mean of (values − target)² over [S, N], each sample weighted by ``weight``."""
    squared = (values - target).pow(2)
    return (squared if weight is None else squared * weight).mean(1)


def site_error(
    values: Tensor, target: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
) -> Tensor:
    """``squared_error`` plus ``bias`` [S] κ_s·(mean of values − target)² per site."""
    error = squared_error(values, target, weight)
    if bias is not None:
        error = error + bias * (values - target).mean(1).pow(2)
    return error
