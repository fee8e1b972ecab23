"""Neuron dynamics: charge → fire → reset, vectorised over a batch of sites.

A neuron first integrates its whole input, v(1) = x, then for t = 1..T fires
s(t) = Θ(v(t) − θ(t)) and resets v(t+1) = v(t) − h(t)·s(t); its value is SN(x) = Σ d(t)·s(t)
(paper Eq. 1-2, 8).

Sign rule (the one implementation the simulator also uses): a neuron codes the magnitude |x|
with the dynamics above and each spike carries the sign of x, so spikes are ternary
{−1, 0, +1} and SN(x) = sign(x) · SN(|x|). The representable set is symmetric: 2^T magnitudes
(including 0) mirrored around zero. A site whose activations are non-negative (softmax
probabilities) simply never emits −1.

Inputs are laid out as [S, ...]: one leading axis of sites matching the table's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from phasecode.coding.table import UNLIMITED, CodeTable

StepFunction = Callable[[Tensor, int], Tensor]  # (v − θ(t), t) → spike in [0, 1]


def heaviside(u: Tensor, _step: int) -> Tensor:
    """Θ(u) with Θ(0) = 1: a neuron fires when its potential reaches the threshold."""
    return (u >= 0).to(u.dtype)


def _per_site(column: Tensor, like: Tensor) -> Tensor:
    """Broadcast an [S] column against an [S, ...] input."""
    return column.reshape(column.shape + (1,) * (like.dim() - 1))


def fire_steps(
    magnitude: Tensor, table: CodeTable, step_fn: StepFunction = heaviside
) -> Iterator[Tensor]:
    """Yield s(1..T) for non-negative inputs [S, ...], one step at a time (bounded memory)."""
    if magnitude.shape[0] != table.sites:
        raise ValueError(f"input has {magnitude.shape[0]} sites, table has {table.sites}")
    v = magnitude
    budget = table.max_spikes
    limited = bool((budget != UNLIMITED).any())
    if limited:
        count = torch.zeros_like(magnitude)
        allowed = _per_site(torch.where(budget == UNLIMITED, table.timesteps, budget), magnitude)
    for t in range(table.timesteps):
        s = step_fn(v - _per_site(table.threshold[:, t], v), t)
        if limited:
            s = s * (count < allowed).to(s.dtype)
            count = count + s.detach()
        v = v - _per_site(table.reset[:, t], v) * s
        yield s


def spikes(x: Tensor, table: CodeTable) -> Tensor:
    """The T signed spike tensors, stacked as [T, S, ...] with values in {−1, 0, +1}."""
    sign = torch.sign(x)
    return torch.stack([sign * s for s in fire_steps(x.abs(), table)])


def decode(spike_train: Tensor, table: CodeTable) -> Tensor:
    """Σ_t d(t)·s(t) for a [T, S, ...] spike train."""
    weight = table.weight.T.reshape(spike_train.shape[:2] + (1,) * (spike_train.dim() - 2))
    return (weight * spike_train).sum(0)


def value(x: Tensor, table: CodeTable, step_fn: StepFunction = heaviside) -> Tensor:
    """SN(x) = sign(x) · Σ_t d(t)·s_t(|x|), accumulated step by step."""
    out = torch.zeros_like(x)
    for t, s in enumerate(fire_steps(x.abs(), table, step_fn)):
        out = out + _per_site(table.weight[:, t], x) * s
    return torch.sign(x) * out


def site_value(x: Tensor, table: CodeTable, site: int) -> Tensor:
    """SN(x) for an activation tensor of any shape, coded by one site of the table."""
    return value(x.unsqueeze(0), table.select(site))[0]
