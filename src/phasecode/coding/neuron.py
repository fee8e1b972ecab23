"""Neuron dynamics: charge → fire → reset, vectorised over a batch of sites.

A neuron first integrates its whole input, v(1) = x, then for t = 1..T fires
s(t) = Θ(v(t) − θ(t)) and resets v(t+1) = v(t) − h(t)·s(t); its value is SN(x) = Σ d(t)·s(t)
(paper Eq. 1-2, 8).

Sign rule (the one implementation the simulator also uses): a neuron codes the magnitude |x|
with the dynamics above and each spike carries the sign of x, so spikes are ternary
{−1, 0, +1} and SN(x) = sign(x) · SN(|x|). The representable set is symmetric: 2^T magnitudes
(including 0) mirrored around zero. A site whose activations are non-negative (softmax
probabilities) simply never emits −1.

Signed-digit neurons (``CodeTable.negative_threshold``) may also fire a −1 on the magnitude
when an earlier spike overshot: s(t) = Θ(v − θ⁺(t)) − Θ(−v − θ⁻(t)), and the reset subtracts
h(t)·s(t) either way. Values are then written in a signed-digit form (7 = 8 − 1: two spikes
instead of three), and the last step can round instead of truncate.

Per-site timesteps (``CodeTable.steps``): a site never fires after its own T.

Inputs are laid out as [S, ...]: one leading axis of sites matching the table's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from phasecode.cache import kernels
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
    active = None if table.uniform_steps else table.step_mask().to(magnitude.dtype)
    for t in range(table.timesteps):
        s = step_fn(v - _per_site(table.threshold[:, t], v), t)
        if table.signed:
            s = s - step_fn(-v - _per_site(table.negative_threshold[:, t], v), t)
        if limited:
            s = s * (count < allowed).to(s.dtype)
            count = count + s.detach().abs()
        if active is not None:
            s = s * _per_site(active[:, t], s)
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


def site_window(steps: int, strength: int) -> int:
    """``mask_window`` for a site that uses ``steps`` of a table's T (per-site timesteps): a
    strength beyond the site's own T keeps only its first spike."""
    return max(steps - 1 - strength, 0)


def mask_spikes(spike_train: Tensor, strength: int, steps: int | None = None) -> Tensor:
    """A [T, ...] spike train with the spikes masking of ``strength`` drops set to zero
    (``steps``: the site's own T when it uses fewer than the train's)."""
    timesteps = spike_train.shape[0]
    mask_window(timesteps, strength)
    window = site_window(timesteps if steps is None else steps, strength)
    if window >= timesteps - 1:
        return spike_train
    fired = spike_train != 0
    step = torch.arange(timesteps, device=spike_train.device).view(-1, *[1] * (fired.dim() - 1))
    first = torch.where(fired, step, timesteps).amin(0)
    return torch.where(step - first <= window, spike_train, torch.zeros_like(spike_train))


def _fused_site_value(
    x: Tensor,
    threshold: Tensor,
    negative: Tensor,
    reset: Tensor,
    weight: Tensor,
    budget: int,
    window: int,
    signed: bool,
) -> Tensor:
    """``value`` for one site on a flat tensor, written so a compiler can fuse all T steps into
    one pass. Each step is the same IEEE operation as in ``fire_steps`` (v ≥ θ ⇔ v − θ ≥ 0;
    −v ≥ θ⁻ ⇔ −v − θ⁻ ≥ 0; v − h·1 = v − h; v − h·(−1) = v + h; v − h·0 = v), so results are
    bit-identical to ``value``. Spikes later than ``window`` steps after the first are left out
    of the output (``mask_spikes``). ``negative`` is read only when ``signed``."""
    v = x.abs()
    out = torch.zeros_like(x)
    steps = threshold.shape[0]
    limited, masked = budget < steps, window < steps - 1  # most sites: neither, a lighter loop
    count = torch.zeros_like(x) if limited else None
    first = torch.full_like(x, float(steps)) if masked else None
    for t in range(steps):
        up = v >= threshold[t]
        down = -v >= negative[t] if signed else None
        if limited:
            allowed = count < budget
            up = up & allowed
            down = down & allowed if signed else None
        fire = (up | down if signed else up) if limited or masked else None
        if limited:
            count = count + fire.to(x.dtype)
        kept_up, kept_down = up, down
        if masked:
            first = torch.where(fire & (first > t), float(t), first)
            kept = t - first <= window
            kept_up = up & kept
            kept_down = down & kept if signed else None
        v = torch.where(up, v - reset[t], v)
        out = torch.where(kept_up, out + weight[t], out)
        if signed:
            v = torch.where(down, v + reset[t], v)
            out = torch.where(kept_down, out - weight[t], out)
    return torch.sign(x) * out


_COMPILED: dict[str, object] = {}


def fast_site_value(
    x: Tensor, table: CodeTable, compiled: bool = True, mask_strength: int = 0
) -> Tensor:
    """SN(x) for any-shaped ``x`` coded by a one-site table, as one fused (compiled) pass.

    This is the fast path's kernel. ``torch.compile`` turns the T steps into a single loop over
    the elements (≈40× faster than eager on CPU; one graph for every size, cached on disk by
    ``cache.kernels``); set ``compiled=False`` or the environment variable PHASECODE_COMPILE=0
    to run the same code eagerly. ``mask_strength`` applies spike masking (``mask_window``); a
    site using fewer steps than the table's T runs only those.
    """
    return fused_site_value(x, fused_arguments(table, mask_strength, x), compiled)


def fused_site_value(x: Tensor, arguments: tuple, compiled: bool = True) -> Tensor:
    """``fast_site_value`` with the neuron's ``fused_arguments`` prepared once by the caller
    (the fast path's hot loop: no table conversion or device sync per call)."""
    kernel = _fused_site_value
    if compiled and kernels.enabled():
        kernel = _COMPILED.setdefault("value", kernels.compiled(_fused_site_value))
    # detached: a flat view of a 3-d or 4-d tensor would make the compiled kernel guard on (and
    # recompile for) the layout of the tensor it views
    return code_inside(x.detach(), arguments, kernel)


def code_inside(x: Tensor, neuron: tuple | None, kernel=_fused_site_value) -> Tensor:
    """SN(x) by ``kernel`` on x's flat view in the neuron's firing dtype, back in x's shape and
    dtype; also for kernels that fuse the neuron with other work (a compiled region, which
    traces ``_fused_site_value`` itself). ``neuron`` as ``fused_arguments``; None: x passes."""
    if neuron is None:
        return x
    return kernel(x.reshape(-1).to(neuron[0].dtype), *neuron).view(x.shape).to(x.dtype)


def fused_arguments(table: CodeTable, mask_strength: int, like: Tensor) -> tuple:
    """``_fused_site_value``'s arguments after the input for a one-site table, on ``like``'s
    device in its firing dtype (also for kernels that fuse the neuron with other work)."""
    if table.sites != 1:
        raise ValueError("fast_site_value codes one site; select it from the table first")
    dtype = firing_dtype(like.dtype)
    row = table if table.threshold.dtype == dtype else table.to(dtype)
    row = row if row.threshold.device == like.device else row.to(device=like.device)
    budget = int(row.max_spikes[0]) or row.timesteps
    steps = int(row.steps[0])
    threshold = row.threshold[0]
    negative = (row.negative_threshold if row.signed else row.threshold)[0]
    if steps < row.timesteps:  # steps past the site's own T never fire; one kernel for all T
        after = torch.arange(steps, row.timesteps, device=like.device)
        threshold = threshold.index_fill(0, after, torch.inf)
        negative = negative.index_fill(0, after, torch.inf)
    window = site_window(steps, mask_strength)
    return threshold, negative, row.reset[0], row.weight[0], budget, window, row.signed


def firing_dtype(dtype: torch.dtype) -> torch.dtype:
    """Neurons fire in float32 whatever the model's dtype (bf16 thresholds would merge
    neighbouring levels); float64 models, used for exact checks, fire in float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32
