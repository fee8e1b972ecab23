"""Information-theoretic yardsticks for a neuron's conversion error.

``lloyd_max``: the MSE-optimal scalar quantizer (Lloyd-Max) with as many magnitude levels as the
neuron can represent (2^T, capped by the number of training samples), with the sign handled as
the neuron handles it: |x| is quantized and the sign restored. It is initialised from the
companding rule of Theorem 1 / Corollary 1 (level density ∝ p(x)^(1/3)) and refined by Lloyd
iterations. ``uniform``: the best uniform quantizer {0, Δ, …, (L−1)Δ} with the clipping Δ chosen
to minimise MSE; what a distribution-blind code reaches at best. Both are fitted on training
samples and scored on held-out samples, like the neurons.
"""

from __future__ import annotations

import torch
from torch import Tensor

from phasecode.training.uniform import best_step, grid_quantize

MAX_LEVELS = 1 << 16


def level_count(timesteps: int, train_size: int) -> int:
    """2^T levels, capped by the sample count (more levels than samples cannot be fitted)."""
    return min(1 << min(timesteps, 30), train_size, MAX_LEVELS)


def companding_levels(magnitude: Tensor, levels: int, window: int = 16) -> Tensor:
    """Initial levels with density ∝ p^(1/3) (Corollary 1), estimated from sorted samples. [S, L]

    Between neighbouring order statistics p ≈ 1/(N·gap), so ∫ p^(1/3) dx grows by ∝ gap^(2/3);
    gaps are smoothed over ``window`` neighbours. Sample-based, hence scale-free: it works for
    heavy tails where a fixed-bin histogram puts the whole bulk into its first bin.
    """
    xs = magnitude.sort(1).values
    n = xs.shape[1]
    k = min(window, n - 1)
    padded = torch.cat([xs[:, :1].expand(-1, k // 2), xs, xs[:, -1:].expand(-1, k - k // 2)], 1)
    gap = ((padded[:, k:] - padded[:, :-k]) / k)[:, :n]
    mass = torch.cat([torch.zeros_like(xs[:, :1]), (gap[:, 1:] ** (2.0 / 3.0))], 1)
    cdf = mass.cumsum(1)
    cdf = cdf / cdf[:, -1:].clamp_min(1e-30)
    targets = (torch.arange(levels, dtype=xs.dtype, device=xs.device) + 0.5) / levels
    pos = torch.searchsorted(cdf.contiguous(), targets.expand(xs.shape[0], -1).contiguous())
    # distinct order statistics for distinct levels: Lloyd never revives a duplicate level
    rank = torch.arange(levels, device=xs.device)
    pos = (pos.clamp(max=n - 1) - rank).cummax(1).values + rank
    pos = torch.minimum(pos, n - levels + rank)
    return xs.gather(1, pos)


def lloyd_max(magnitude: Tensor, levels: int, iterations: int = 100) -> Tensor:
    """Lloyd-Max levels [S, L] (sorted) for non-negative samples [S, N].

    On sorted samples every cell is a run of them, so an iteration finds the L − 1 cell edges
    by binary search and the cells' sums from a prefix sum (float64): O(S·L·log N) instead of
    assigning all S·N samples. A sample on an edge belongs to the lower cell, as in ``assign``.
    Stops early at a fixed point."""
    xs = magnitude.sort(1).values
    q = companding_levels(xs, levels)
    rows, n = xs.shape
    prefix = torch.cat(
        [xs.new_zeros(rows, 1, dtype=torch.float64), xs.cumsum(1, dtype=torch.float64)], 1
    )
    first = torch.zeros(rows, 1, dtype=torch.long, device=xs.device)
    last = torch.full_like(first, n)
    for _ in range(iterations):
        edges = ((q[:, 1:] + q[:, :-1]) / 2).contiguous()
        bounds = torch.cat([first, torch.searchsorted(xs, edges, right=True), last], 1)
        count = bounds[:, 1:] - bounds[:, :-1]
        total = prefix.gather(1, bounds[:, 1:]) - prefix.gather(1, bounds[:, :-1])
        mean = (total / count.clamp_min(1)).to(q.dtype)
        updated = torch.where(count > 0, mean, q).sort(1).values
        if torch.equal(updated, q):
            break
        q = updated
    return q


def assign(magnitude: Tensor, levels: Tensor) -> Tensor:
    """Index of the nearest level for each sample (levels sorted along dim 1)."""
    edges = ((levels[:, 1:] + levels[:, :-1]) / 2).contiguous()
    return torch.searchsorted(edges, magnitude.contiguous())


def quantize(x: Tensor, levels: Tensor) -> Tensor:
    """sign(x) · nearest level to |x|."""
    mag = x.abs()
    return torch.sign(x) * levels.gather(1, assign(mag, levels))


def lloyd_max_mse(train: Tensor, heldout: Tensor, timesteps: int) -> Tensor:
    """Held-out MSE [S] of the Lloyd-Max quantizer fitted on ``train``."""
    levels = lloyd_max(train.abs(), level_count(timesteps, train.shape[1]))
    return (quantize(heldout, levels) - heldout).pow(2).mean(1)


def uniform_mse(train: Tensor, heldout: Tensor, timesteps: int) -> Tensor:
    """Held-out MSE [S] of the best-clipped uniform quantizer with 2^T magnitude levels."""
    count = level_count(timesteps, train.shape[1])
    step = best_step(train.abs(), count, rounding=True)
    q = grid_quantize(heldout.abs(), step, count, rounding=True)
    return (torch.sign(heldout) * q - heldout).pow(2).mean(1)
