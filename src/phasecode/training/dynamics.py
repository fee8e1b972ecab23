"""Alg. 1's two hot loops as fused kernels: the surrogate dynamics of a batch of neurons
(SN(|x|) and the spike count, with sigmoid-surrogate gradients) and their spike trains.

Run step by step under autograd, one surrogate step on SmolLM2's 301 sites × 2500 samples
made ~60 elementwise passes forward and as many backward (~78 ms on two CPU cores); the
spike moments of all 10k samples another ~50 (~120 ms). Written as whole-T loops over the
elements, ``torch.compile`` turns each into one pass (the surrogate step ~12 ms).

- Forward values and spikes are bit-identical to ``coding.neuron.fire_steps`` (the same IEEE
  steps: v ≥ θ ⇔ v − θ ≥ 0, v − h·s, out + d·s in that order).
- The backward pass is the chain rule of those dynamics with the sigmoid surrogate
  (``surrogate.sigmoid_slope``), written out: it recomputes the forward instead of storing
  T potentials, and sums over samples in its own order, so gradients equal autograd's up to
  float rounding (tests/training/test_dynamics.py).

Tables here are those training builds: every site fires up to its T (no spike budget, no
per-site step mask); a signed-digit neuron also fires −1 below −θ⁻(t).
"""

from __future__ import annotations

import torch
from torch import Tensor

from phasecode.cache import kernels
from phasecode.cache.kernels import mark_dynamic
from phasecode.coding.table import UNLIMITED, CodeTable
from phasecode.training.surrogate import sigmoid_slope, slopes


def surrogate_dynamics(
    magnitude: Tensor, table: CodeTable, sharpness: float
) -> tuple[Tensor, Tensor]:
    """(SN(|x|), spikes per sample) [S, N] for non-negative ``magnitude`` [S, N]: exact values,
    with surrogate gradients for θ (θ⁻), h and d, and a straight-through one for the magnitude
    (block reconstruction: upstream neurons learn from this one's error). The count sums
    every Θ the dynamics evaluate (θ⁺ and θ⁻ apart), so it has a gradient even where nothing
    fired (the energy term)."""
    _check_trainable(magnitude, table)
    negative = table.negative_threshold if table.signed else table.threshold
    k = slopes(table.weight, sharpness)
    return _SurrogateDynamics.apply(
        magnitude, table.threshold, negative, table.reset, table.weight, k, table.signed
    )


def spike_train(magnitude: Tensor, table: CodeTable) -> Tensor:
    """The spikes s(1..T) of ``magnitude`` [S, N] as [S, T, N] (values in {−1, 0, 1})."""
    _check_trainable(magnitude, table)
    negative = table.negative_threshold if table.signed else table.threshold
    kernel = kernels.compiled(_spike_train, dynamic=None)
    per_site = _per_site(table.threshold, negative, table.reset)
    return kernel(*_samples(magnitude), *per_site, table.signed)


def _check_trainable(magnitude: Tensor, table: CodeTable) -> None:
    if magnitude.dim() != 2 or magnitude.shape[0] != table.sites:
        raise ValueError(f"need [{table.sites}, N] samples, got {tuple(magnitude.shape)}")
    if bool((table.max_spikes != UNLIMITED).any()) or not table.uniform_steps:
        raise ValueError("training tables fire up to their T: no spike budget, one T per site")


def _samples(*tensors: Tensor) -> list[Tensor]:
    """[S, N] tensors as one kernel takes every shape: sites and samples are any number, and
    contiguous (a slice of the samples is a strided view: another signature, another compile)."""
    return [mark_dynamic(t.detach().contiguous(), 0, 1) for t in tensors]


def _per_site(*tensors: Tensor) -> list[Tensor]:
    """[S, T] parameters: any number of sites, T fixed (the kernels unroll their T steps)."""
    return [mark_dynamic(t.detach(), 0) for t in tensors]


class _SurrogateDynamics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, magnitude, threshold, negative, reset, weight, k, signed: bool):
        kernel = kernels.compiled(_forward, dynamic=None)
        per_site = _per_site(threshold, negative, reset, weight)
        out, count = kernel(*_samples(magnitude), *per_site, signed)
        ctx.save_for_backward(magnitude, threshold, negative, reset, weight, k)
        ctx.signed = signed
        return out, count

    @staticmethod
    def backward(ctx, grad_out, grad_count):
        kernel = kernels.compiled(_backward, dynamic=None)
        magnitude, *parameters = ctx.saved_tensors
        (magnitude,) = _samples(magnitude)
        grad_out, grad_count = _samples(grad_out, grad_count)
        grads = kernel(magnitude, *_per_site(*parameters), grad_out, grad_count, ctx.signed)
        threshold, negative, reset, weight = grads
        grad_magnitude = None
        if ctx.needs_input_grad[0]:  # straight through inside the range, zero where it clips
            reach = parameters[3].abs().sum(1, keepdim=True)
            grad_magnitude = grad_out * (magnitude <= reach).to(grad_out.dtype)
        return (
            grad_magnitude,
            threshold,
            negative if ctx.signed else None,
            reset,
            weight,
            None,
            None,
        )


def _forward(
    x: Tensor, threshold: Tensor, negative: Tensor, reset: Tensor, weight: Tensor, signed: bool
) -> tuple[Tensor, Tensor]:
    v, out, count = x, torch.zeros_like(x), torch.zeros_like(x)
    for t in range(threshold.shape[1]):
        up = (v - threshold[:, t, None] >= 0).to(x.dtype)
        count = count + up
        s = up
        if signed:
            down = (-v - negative[:, t, None] >= 0).to(x.dtype)
            count = count + down
            s = up - down
        v = v - reset[:, t, None] * s
        out = out + weight[:, t, None] * s
    return out, count


def _spike_train(
    x: Tensor, threshold: Tensor, negative: Tensor, reset: Tensor, signed: bool
) -> Tensor:
    v, spikes = x, []
    for t in range(threshold.shape[1]):
        s = (v - threshold[:, t, None] >= 0).to(x.dtype)
        if signed:
            s = s - (-v - negative[:, t, None] >= 0).to(x.dtype)
        v = v - reset[:, t, None] * s
        spikes.append(s)
    return torch.stack(spikes, 1)


def _backward(
    x: Tensor,
    threshold: Tensor,
    negative: Tensor,
    reset: Tensor,
    weight: Tensor,
    k: Tensor,
    grad_out: Tensor,
    grad_count: Tensor,
    signed: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients [S, T] of Σ grad_out·SN + Σ grad_count·count for θ, θ⁻, h and d.

    With u(t) = v(t) − θ(t) (and u⁻(t) = −v(t) − θ⁻(t)), s = Θ(u) − Θ(u⁻) and
    v(t+1) = v(t) − h(t)·s(t), backwards from g_v(T+1) = 0:
    g_s = grad_out·d(t) − h(t)·g_v(t+1); g_u = (g_s + grad_count)·σ'(u);
    g_u⁻ = (−g_s + grad_count)·σ'(u⁻); g_v(t) = g_v(t+1) + g_u − g_u⁻;
    ∂θ = −Σ g_u, ∂θ⁻ = −Σ g_u⁻, ∂h = −Σ g_v(t+1)·s, ∂d = Σ grad_out·s."""
    steps = threshold.shape[1]
    v, ups, downs, spikes = x, [], [], []
    for t in range(steps):
        up = v - threshold[:, t, None]
        s = (up >= 0).to(x.dtype)
        down = None
        if signed:
            down = -v - negative[:, t, None]
            s = s - (down >= 0).to(x.dtype)
        ups.append(up)
        downs.append(down)
        spikes.append(s)
        v = v - reset[:, t, None] * s
    grad_v = torch.zeros_like(x)
    grads: list[list[Tensor]] = [[], [], [], []]  # θ, θ⁻, h, d, last step first
    for t in reversed(range(steps)):
        s, slope = spikes[t], k[:, t, None]
        grad_s = grad_out * weight[:, t, None] - reset[:, t, None] * grad_v
        grad_up = (grad_s + grad_count) * sigmoid_slope(ups[t], slope)
        grads[0].append(-grad_up.sum(1))
        grads[2].append(-(grad_v * s).sum(1))
        grads[3].append((grad_out * s).sum(1))
        grad_v = grad_v + grad_up
        if signed:
            grad_down = (grad_count - grad_s) * sigmoid_slope(downs[t], slope)
            grads[1].append(-grad_down.sum(1))
            grad_v = grad_v - grad_down
    stacked = [torch.stack(g[::-1], 1) if g else torch.zeros_like(threshold) for g in grads]
    return stacked[0], stacked[1], stacked[2], stacked[3]
