"""A neuron's transfer function SN(x) read off its own dynamics: levels and decision thresholds.

The report must not re-derive the code analytically (θ and h are learned and decoupled from
d, and a spike budget may cut firing short), so it runs ``coding.neuron.value`` — the one
implementation of charge/fire/reset — on a dense grid over the plotted range and refines every
jump by bisection. Levels are the distinct values SN takes on the range; thresholds are the
inputs where SN changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from phasecode.coding.neuron import value
from phasecode.coding.table import CodeTable

GRID = 1 << 14  # points per grid (one linear, one asinh-warped): finer than the level gaps shown
BISECTIONS = 20  # 2^-20 of a grid gap: far below what a figure resolves


@dataclass(frozen=True)
class Transfer:
    """SN(x) on [lo, hi]: the values it takes and where it jumps."""

    levels: Tensor  # sorted distinct values of SN on the range, float64
    thresholds: Tensor  # sorted inputs where SN jumps, float64


def sn(x: Tensor, table: CodeTable) -> Tensor:
    """SN(x) of a one-site table for a 1-D ``x`` (float64, eager dynamics)."""
    row = table.to(torch.float64)
    return value(x.to(torch.float64)[None, :], row)[0]


def _grid(lo: float, hi: float, scale: float) -> Tensor:
    """Union of a linear grid and an asinh grid over [lo, hi] (and 0 if inside): dense both in
    the body (near 0) and in the tails."""
    linear = torch.linspace(lo, hi, GRID, dtype=torch.float64)
    parts = [linear]
    if scale > 0 and scale != float("inf"):
        s = torch.tensor(scale, dtype=torch.float64)
        u = torch.linspace(
            float(torch.asinh(torch.tensor(lo) / s)),
            float(torch.asinh(torch.tensor(hi) / s)),
            GRID,
            dtype=torch.float64,
        )
        parts.append(s * torch.sinh(u))
    if lo < 0 < hi:
        parts.append(torch.zeros(1, dtype=torch.float64))
    grid = torch.cat(parts).clamp(lo, hi)
    return torch.unique(grid)  # sorted


def transfer(table: CodeTable, lo: float, hi: float, scale: float = float("inf")) -> Transfer:
    """Levels and thresholds of site ``table`` (one site) on [lo, hi]."""
    if table.sites != 1:
        raise ValueError("transfer() reads one site; select it from the table first")
    x = _grid(lo, hi, scale)
    y = sn(x, table)
    jumps = torch.nonzero(y[1:] != y[:-1]).flatten()
    a, b = x[jumps], x[jumps + 1]
    left = y[jumps]
    for _ in range(BISECTIONS):
        mid = (a + b) / 2
        same = sn(mid, table) == left
        a = torch.where(same, mid, a)
        b = torch.where(same, b, mid)
    thresholds = ((a + b) / 2).sort().values
    return Transfer(torch.unique(y), thresholds)


def uniform_levels(count: int, top: float) -> Tensor:
    """``count`` evenly spaced magnitudes 0..top: rate/temporal coding's allocation (Fig. 3)."""
    return torch.linspace(0.0, top, max(count, 2), dtype=torch.float64)


def nearest(x: Tensor, levels: Tensor) -> Tensor:
    """Round each x to the nearest of the sorted ``levels`` (a plain quantizer)."""
    index = torch.searchsorted(levels, x).clamp(1, len(levels) - 1)
    low, high = levels[index - 1], levels[index]
    return torch.where((x - low).abs() <= (high - x).abs(), low, high)
