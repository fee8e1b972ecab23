"""Trainable multi-granularity phase-coding neurons for a batch of sites (Eq. 7-10).

Training starts from LAS's levels (d = h = τ·2^-t) with thresholds lowered by half the finest
step, i.e. from uniform rounding with an MSE-optimal clip, so a trained neuron never ends worse
on its training samples than the best uniform code of its family.

Parameters live in units of each site's own scale (samples are divided by their max |x|), so
one learning rate serves every site. θ and h are stored relative to their starting values
(θ(t) = θ_0(t)·u_θ(t), h(t) = h_0(t)·u_h(t)), which makes Adam's step a relative change for the
finest and the coarsest step alike. d(t) = scale·B_{g(t)}^(-t) is never free: it is built from
the bases.

Signed-digit neurons (``signed=True``) also train θ⁻(t). They start from θ⁺ = θ⁻ = ¾·d(t)
(and d(T)/2 at the last step): with base 2 that greedy rule writes the same rounded value as
the binary neuron with about 16 % fewer spikes on Gaussian-like samples (docs/method.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from phasecode.coding.baselines import las
from phasecode.coding.table import UNLIMITED, CodeTable, PhaseBases, phase_weights
from phasecode.training.dynamics import spike_train, surrogate_dynamics

MIN_BASE = 1.0 + 1e-3  # B must stay > 1 so that d(t) decreases with t


def rounding_thresholds(weight: Tensor) -> Tensor:
    """θ(t) = d(t) − d(T)/2: with h = d and base 2 the greedy neuron then rounds to the nearest
    level instead of truncating (LAS truncates). This is the start point of training."""
    return weight - weight[:, -1:] / 2


SIGNED_DIGIT_THRESHOLD = 0.75  # θ±(t) = ¾·d(t): fire only when the remaining steps cannot do better


def signed_digit_thresholds(weight: Tensor) -> Tensor:
    """θ⁺(t) = θ⁻(t) = ¾·d(t) for t < T and d(T)/2 at the last step (rounding)."""
    threshold = SIGNED_DIGIT_THRESHOLD * weight
    threshold[:, -1] = weight[:, -1] / 2
    return threshold


def rounding_las(tau: Tensor, timesteps: int) -> CodeTable:
    """LAS levels with rounding thresholds: the best uniform code of the phase family."""
    table = las(tau, timesteps)
    return CodeTable(
        rounding_thresholds(table.weight),
        table.reset,
        table.weight,
        table.max_spikes,
        table.phase,
    )


class PhaseNeurons(nn.Module):
    """S trainable neurons, each with its own timestep allocation over at most G bases."""

    def __init__(
        self,
        tau: Tensor,
        allocation: list[tuple[int, ...]],
        coupled: bool = False,
        signed: bool = False,
    ):
        super().__init__()
        timesteps = sum(allocation[0])
        grains = max(len(a) for a in allocation)
        steps = torch.arange(1, timesteps + 1, dtype=tau.dtype, device=tau.device)
        self.allocation = tuple(allocation)
        self.coupled = coupled
        reference = tau[:, None] * 2.0 ** (-steps)  # LAS: θ = h = d = τ·2^-t
        self.register_buffer("reference", reference)
        start = signed_digit_thresholds(reference) if signed else rounding_thresholds(reference)
        self.register_buffer("reference_threshold", start)
        self.u_threshold = nn.Parameter(torch.ones_like(reference))
        self.u_negative = nn.Parameter(torch.ones_like(reference)) if signed else None
        self.u_reset = None if coupled else nn.Parameter(torch.ones_like(reference))
        self.bases = nn.Parameter(
            torch.full((tau.shape[0], grains), 2.0, dtype=tau.dtype, device=tau.device)
        )
        self.log_scale = nn.Parameter(tau.log().clone())

    def spike_parameters(self) -> list[nn.Parameter]:
        """{h, θ, θ⁻}: trained with the surrogate gradient."""
        return [p for p in (self.u_threshold, self.u_reset, self.u_negative) if p is not None]

    def base_parameters(self) -> list[nn.Parameter]:
        """B and the scale: trained with the true gradient."""
        return [self.bases, self.log_scale]

    def clamp_(self) -> None:
        """Keep B > 1 and thresholds/resets positive after an optimiser step."""
        with torch.no_grad():
            self.bases.clamp_(min=MIN_BASE)
            for p in self.spike_parameters():
                p.clamp_(min=1e-3)

    def weights(self) -> Tensor:
        return phase_weights(self.log_scale.exp(), self.bases, self.allocation)

    def table(self) -> CodeTable:
        """The current (differentiable) coding table."""
        threshold = self.reference_threshold * self.u_threshold
        reset = threshold if self.u_reset is None else self.reference * self.u_reset
        budget = torch.full(
            (threshold.shape[0],), UNLIMITED, dtype=torch.long, device=threshold.device
        )
        phase = PhaseBases(self.log_scale.exp(), self.bases, self.allocation)
        negative = None
        if self.u_negative is not None:
            negative = self.reference_threshold * self.u_negative
        return CodeTable(threshold, reset, self.weights(), budget, phase, negative)

    def frozen_table(self) -> CodeTable:
        """A detached copy of the current table."""
        t = self.table()
        phase = PhaseBases(t.phase.scale.detach(), t.phase.bases.detach(), t.phase.allocation)
        negative = None if t.negative_threshold is None else t.negative_threshold.detach()
        return CodeTable(
            t.threshold.detach(), t.reset.detach(), t.weight.detach(), t.max_spikes, phase, negative
        )

    def surrogate_values(self, magnitude: Tensor, sharpness: float) -> tuple[Tensor, Tensor]:
        """SN(|x|) with surrogate gradients for θ, h (and true ones for d), and the spike count
        per sample [S, N] with the same surrogate gradient (for the energy term)."""
        return surrogate_dynamics(magnitude, self.table(), sharpness)


class SpikeMoments(NamedTuple):
    """``spike_statistics``: the quadratic's terms, and the spikes per neuron [S]."""

    gram: Tensor  # [S, T, T]
    cross: Tensor  # [S, T]
    energy: Tensor  # [S]
    spikes: Tensor  # [S]


def spike_statistics(
    magnitude: Tensor,
    table: CodeTable,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
) -> SpikeMoments:
    """Moments that make the loss an exact quadratic in d while θ, h are fixed.

    With θ, h fixed the spikes do not depend on B, so mean(w·(Σ d_t s_t − |x|)²) =
    dᵀGd − 2bᵀd + c with G = E[w s sᵀ] [S,T,T], b = E[w s|x|] [S,T], c = E[w x²] [S] (w: the
    per-sample loss weight, 1 for plain MSE): every B step then costs O(S·T²) instead of a
    pass over the samples, and its gradient is the true one. ``bias`` [S] adds κ·(mean error)²,
    itself the quadratic (dᵀE[s] − E[|x|])², to each site's loss.
    """
    with torch.no_grad():
        s = spike_train(magnitude, table)  # [S, T, N]
        n = magnitude.shape[1]
        ws = s if weight is None else s * weight[:, None, :]
        gram = ws @ s.transpose(1, 2) / n
        cross = (ws @ magnitude[:, :, None])[:, :, 0] / n
        squared = magnitude.pow(2)
        energy = (squared if weight is None else weight * squared).mean(1)
        if bias is not None:
            rate, mean = s.mean(2), magnitude.mean(1)
            gram = gram + bias[:, None, None] * rate[:, :, None] * rate[:, None, :]
            cross = cross + (bias * mean)[:, None] * rate
            energy = energy + bias * mean.pow(2)
        spikes = s.abs().sum(1).mean(1)
    return SpikeMoments(gram, cross, energy, spikes)


def quadratic_loss(weight: Tensor, stats: SpikeMoments) -> Tensor:
    """Per-site MSE from ``spike_statistics`` for output weights d [S, T]."""
    gram, cross, energy, _ = stats
    quad = (weight[:, None, :] @ gram @ weight[:, :, None])[:, 0, 0]
    return quad - 2 * (weight * cross).sum(1) + energy
