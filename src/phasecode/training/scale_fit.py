"""Per-site scale τ for the untrained codes (LAS, SpikedAttention, TTFS, rate).

Those codes fix the shape of their level set and leave one constant, the scale. We choose it
per site to minimise MSE on the training samples, so that every baseline is shown at its best
and the comparison with trained neurons is not flattered. LAS, rate and TTFS truncate onto a
uniform grid, so their τ comes from the grid search in ``uniform.py``; other codes are searched
by simulating the neuron.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from phasecode.coding.neuron import value
from phasecode.coding.table import CodeTable, concat_tables
from phasecode.training.uniform import best_step

CodeBuilder = Callable[[Tensor, int], CodeTable]

# method -> (number of grid levels, grid steps per τ), both functions of T
TRUNCATING_GRIDS: dict[str, tuple[Callable[[int], int], Callable[[int], int]]] = {
    "las": (lambda t: 2**t, lambda t: 2**t),
    "ttfs": (lambda t: t + 1, lambda t: t),
    "rate": (lambda t: t + 1, lambda t: t),
}


def fit_tau(method: str, samples: Tensor, timesteps: int, build: CodeBuilder) -> Tensor:
    """MSE-optimal τ [S] for a fixed code."""
    if method in TRUNCATING_GRIDS:
        levels, per_tau = TRUNCATING_GRIDS[method]
        step = best_step(samples.abs(), levels(timesteps), rounding=False)
        return step * per_tau(timesteps)
    return fit_scale(samples, timesteps, build)


def fit_scale(
    samples: Tensor, timesteps: int, build: CodeBuilder, grid: int = 32, rounds: int = 2
) -> Tensor:
    """τ [S] minimising Σ (SN(x; τ) − x)² over a geometric grid, refined ``rounds`` times."""
    top = samples.abs().amax(1).clamp_min(1e-12)
    lo, hi = torch.full_like(top, 0.01).log(), torch.full_like(top, 1.2).log()
    best = top
    for _ in range(rounds):
        frac = torch.linspace(0, 1, grid, dtype=samples.dtype, device=samples.device)
        cand = top[:, None] * (lo[:, None] + (hi - lo)[:, None] * frac).exp()  # [S, G]
        errors = _scale_errors(samples, timesteps, build, cand)
        pick = errors.argmin(1)
        best = cand.gather(1, pick[:, None])[:, 0]
        step = (hi - lo) / (grid - 1)
        center = (best / top).log()
        lo, hi = center - 2 * step, center + 2 * step
    return best


def _scale_errors(samples: Tensor, timesteps: int, build: CodeBuilder, cand: Tensor) -> Tensor:
    """MSE of each candidate scale, [S, G]; candidates are evaluated as extra sites."""
    s, g = cand.shape
    table = concat_tables([build(cand[:, j].contiguous(), timesteps) for j in range(g)])
    x = samples.repeat(g, 1)  # site-major blocks of candidate j
    err = (value(x, table) - x).pow(2).mean(1)
    return err.reshape(g, s).T
