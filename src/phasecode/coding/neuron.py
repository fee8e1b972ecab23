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

import os
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from phasecode.coding.table import UNLIMITED, CodeTable
from phasecode.errors import PhasecodeError

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


def mask_window(timesteps: int, strength: int) -> int:
    """Steps a neuron keeps after its first spike under spike masking of ``strength``.

    Masking (paper App. D.7): phase-coded spikes weigh less the later they come, so once a
    neuron has fired at step t0, its spikes after step t0 + (T − 1 − strength) are dropped.
    Strength 0 drops nothing; strength T − 1 keeps only the first spike. The neuron's own
    dynamics (charge, fire, reset) are unchanged: the mask removes spikes from its output.
    """
    if not 0 <= strength < timesteps:
        raise PhasecodeError(f"mask strength must be in 0..T-1={timesteps - 1}, got {strength}")
    return timesteps - 1 - strength


def mask_spikes(spike_train: Tensor, strength: int) -> Tensor:
    """A [T, ...] spike train with the spikes masking of ``strength`` drops set to zero."""
    timesteps = spike_train.shape[0]
    window = mask_window(timesteps, strength)
    if window == timesteps - 1:
        return spike_train
    fired = spike_train != 0
    steps = torch.arange(timesteps, device=spike_train.device).view(-1, *[1] * (fired.dim() - 1))
    first = torch.where(fired, steps, timesteps).amin(0)
    return torch.where(steps - first <= window, spike_train, torch.zeros_like(spike_train))


def _fused_site_value(
    x: Tensor, threshold: Tensor, reset: Tensor, weight: Tensor, budget: int, window: int
) -> Tensor:
    """``value`` for one site on a flat tensor, written so a compiler can fuse all T steps into
    one pass. Each step is the same IEEE operation as in ``fire_steps`` (v ≥ θ ⇔ v − θ ≥ 0;
    v − h·1 = v − h; v − h·0 = v), so results are bit-identical to ``value``. Spikes later than
    ``window`` steps after the first are left out of the output (``mask_spikes``)."""
    v = x.abs()
    out = torch.zeros_like(x)
    count = torch.zeros_like(x)
    first = torch.full_like(x, float(threshold.shape[0]))
    for t in range(threshold.shape[0]):
        fire = (v >= threshold[t]) & (count < budget)
        count = count + fire.to(x.dtype)
        first = torch.where(fire & (first > t), float(t), first)
        v = torch.where(fire, v - reset[t], v)
        out = torch.where(fire & (t - first <= window), out + weight[t], out)
    return torch.sign(x) * out


_COMPILED: dict[str, object] = {}


def fast_site_value(
    x: Tensor, table: CodeTable, compiled: bool = True, mask_strength: int = 0
) -> Tensor:
    """SN(x) for any-shaped ``x`` coded by a one-site table, as one fused (compiled) pass.

    This is the fast path's kernel. ``torch.compile`` turns the T steps into a single loop over
    the elements (≈40× faster than eager on CPU); set ``compiled=False`` or the environment
    variable PHASECODE_COMPILE=0 to run the same code eagerly. ``mask_strength`` applies
    spike masking (``mask_window``).
    """
    if table.sites != 1:
        raise ValueError("fast_site_value codes one site; select it from the table first")
    dtype = firing_dtype(x.dtype)
    row = table if table.threshold.dtype == dtype else table.to(dtype)
    row = row if row.threshold.device == x.device else row.to(device=x.device)
    budget = int(row.max_spikes[0]) or row.timesteps
    fn = _fused_site_value
    if compiled and os.environ.get("PHASECODE_COMPILE", "1") != "0":
        fn = _COMPILED.setdefault("value", torch.compile(_fused_site_value, dynamic=True))
    window = mask_window(row.timesteps, mask_strength)
    flat = fn(
        x.reshape(-1).to(dtype), row.threshold[0], row.reset[0], row.weight[0], budget, window
    )
    return flat.reshape(x.shape).to(x.dtype)


def firing_dtype(dtype: torch.dtype) -> torch.dtype:
    """Neurons fire in float32 whatever the model's dtype (bf16 thresholds would merge
    neighbouring levels); float64 models, used for exact checks, fire in float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32
