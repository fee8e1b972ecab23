"""Alg. 1: alternating optimisation of {h, θ} (surrogate gradient) and B (true gradient).

Every site of a model trains in one batch: the loss is the sum of per-site MSEs, so each site's
parameters see only their own gradient, and Adam's per-parameter normalisation makes the sum
equivalent to training each site alone. Modes: ``alternating`` (Alg. 1), ``joint`` (all
parameters in one step, Table 6) and ``coupled`` (h = θ, Table 7).

The θ/h steps of the alternating modes see a slice of each site's samples in turn
(``batch_samples``): their gradient is a mean over samples, so a quarter of them steers as well
at a quarter of the cost, while the B steps' exact quadratic and the kept-best choice use all.

Energy-aware training adds λ_s · E[spikes per neuron] to site s's loss (the count is the
surrogate's, so θ and h see its gradient); λ_s is what one spike of that site costs in units of
its squared error (``training.budget``). The B steps do not move spikes, so they keep the MSE.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from phasecode.coding.table import CodeTable
from phasecode.errors import PhasecodeError
from phasecode.training.neurons import (
    PhaseNeurons,
    quadratic_loss,
    spike_statistics,
)
from phasecode.training.objective import site_error
from phasecode.training.uniform import best_step

MODES = ("alternating", "joint", "coupled")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of Alg. 1 (N, N1, N2, η1, η2) and Alg. 2 (N_α, η_α)."""

    rounds: int = 40  # N
    threshold_steps: int = 4  # N1, steps on {h, θ}
    base_steps: int = 8  # N2, steps on B (cheap: exact quadratic, see neurons.py)
    lr_threshold: float = 0.03  # η1, relative to each step's start value
    lr_base: float = 0.03  # η2
    sharpness: float = 4.0  # surrogate sigmoid slope, in units of 1/d(t)
    mode: str = "alternating"
    search_steps: int = 40  # N_α
    lr_alpha: float = 0.1  # η_α
    search_samples: int = 512  # samples per site used during the allocation search
    # samples per site in each θ/h step of alternating/coupled training (consecutive slices in
    # turn; reservoir samples are in random order); None: all. B steps and the kept-best
    # choice always see every sample. 2500 of 10k: 4× cheaper steps at the same conversion
    # error (docs/method.md#training-eq-10-alg-1)
    batch_samples: int | None = 2500

    def __post_init__(self) -> None:
        if self.batch_samples is not None and self.batch_samples < 1:
            raise PhasecodeError(
                f"--batch-samples must be a count >= 1 or all, got {self.batch_samples}"
            )
        if self.mode not in MODES:
            raise PhasecodeError(f"unknown training mode {self.mode!r}; choose from {MODES}")


@dataclass
class TrainResult:
    """Trained tables (in the samples' own units) and the per-site loss curve."""

    table: CodeTable
    loss_curve: Tensor  # [S, steps], normalised units (MSE / max|x|²)
    phases: list[str] = field(default_factory=list)  # "threshold" | "base" | "joint" per step


def site_scale(samples: Tensor) -> Tensor:
    """Per-site normaliser: the largest |x| seen in training."""
    return samples.abs().amax(1).clamp_min(1e-12)


def init_neurons(
    magnitude: Tensor,
    allocation: list[tuple[int, ...]],
    coupled: bool,
    signed: bool = False,
    weight: Tensor | None = None,
) -> PhaseNeurons:
    """Neurons initialised from rounding LAS (see neurons.py) with its (weighted-)MSE-optimal
    τ: a weighted objective that cares about the tail starts from a wider range."""
    timesteps = sum(allocation[0])
    tau = best_step(magnitude, 2**timesteps, rounding=True, weight=weight) * 2**timesteps
    return PhaseNeurons(tau, allocation, coupled=coupled, signed=signed)


def train_neurons(
    samples: Tensor,
    allocation: list[tuple[int, ...]],
    config: TrainConfig | None = None,
    progress: bool = False,
    signed: bool = False,
    spike_cost: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
) -> TrainResult:
    """Fit one neuron per row of ``samples`` [S, N] with the given per-site allocations.
    ``spike_cost`` [S]: the energy term's λ_s, in units of the samples' squared values;
    ``weight`` [S, N]: per-sample loss weights (mean 1 per site; the Fisher objective);
    ``bias`` [S]: κ_s of a κ·(mean error)² term (errors that add up coherently downstream)."""
    config = config or TrainConfig()
    scale = site_scale(samples)
    magnitude = (samples / scale[:, None]).abs()
    neurons = init_neurons(magnitude, allocation, config.mode == "coupled", signed, weight)
    penalty = None if spike_cost is None else spike_cost / scale.pow(2)
    loss = _Loss(magnitude, penalty, weight, bias)
    curve, phases = _optimise(neurons, config, progress, loss)
    table = neurons.frozen_table().scaled(scale)
    return TrainResult(table, torch.stack(curve, 1), phases)


@dataclass
class _Loss:
    """What Alg. 1 minimises: the (weighted) squared error on the normalised magnitudes, plus
    ``penalty`` [S] per expected spike when training is energy-aware."""

    magnitude: Tensor  # [S, N]
    penalty: Tensor | None
    weight: Tensor | None  # [S, N], mean 1 per site
    bias: Tensor | None = None  # [S] κ of the κ·(mean error)² term

    def error(self, values: Tensor) -> Tensor:
        return site_error(values, self.magnitude, self.weight, self.bias)

    def slices(self, size: int | None) -> list[_Loss]:
        """This loss on N/size equal slices of the samples (every sample in exactly one);
        [itself] if ``size`` is None or covers all samples."""
        parts = 1 if size is None else max(1, round(self.magnitude.shape[1] / size))
        if parts == 1:
            return [self]
        magnitudes = self.magnitude.tensor_split(parts, dim=1)
        weights = [None] * parts if self.weight is None else self.weight.tensor_split(parts, dim=1)
        return [
            _Loss(magnitude, self.penalty, weight, self.bias)
            for magnitude, weight in zip(magnitudes, weights, strict=True)
        ]


def _optimise(neurons: PhaseNeurons, config: TrainConfig, progress: bool, loss: _Loss):
    """Run Alg. 1 (or its joint variant), keeping each site's best parameters seen."""
    best = _Best(neurons)
    curve: list[Tensor] = []
    phases: list[str] = []
    if config.mode == "joint":
        opt = torch.optim.Adam(
            [
                {"params": neurons.spike_parameters(), "lr": config.lr_threshold},
                {"params": neurons.base_parameters(), "lr": config.lr_base},
            ]
        )
        steps = config.rounds * config.threshold_steps
        for _ in tqdm(range(steps), desc="training", unit="step", disable=not progress):
            curve.append(_surrogate_step(neurons, loss, opt, config, best))
            phases.append("joint")
        best.restore()
        return curve, phases
    opt_spike = torch.optim.Adam(neurons.spike_parameters(), lr=config.lr_threshold)
    opt_base = torch.optim.Adam(neurons.base_parameters(), lr=config.lr_base)
    slices = loss.slices(config.batch_samples)
    if len(slices) > 1:
        _offer_start(neurons, loss, config, best)  # θ/h steps on slices offer nothing
    batches = itertools.cycle(slices)
    for _ in tqdm(range(config.rounds), desc="training", unit="round", disable=not progress):
        for _ in range(config.threshold_steps):
            curve.append(_surrogate_step(neurons, next(batches), opt_spike, config, best, loss))
            phases.append("threshold")
        stats = spike_statistics(loss.magnitude, neurons.frozen_table(), loss.weight, loss.bias)
        for _ in range(config.base_steps):
            curve.append(_base_step(neurons, stats, opt_base, best, loss.penalty))
            phases.append("base")
    best.restore()
    return curve, phases


def _offer_start(neurons, loss: _Loss, config: TrainConfig, best) -> None:
    """Offer the starting parameters on every sample, so that training on slices never ends
    worse than its start (the B steps offer every later state)."""
    with torch.no_grad():
        values, count = neurons.surrogate_values(loss.magnitude, config.sharpness)
        best.spikes = count.mean(1)
        penalty = 0.0 if loss.penalty is None else loss.penalty * best.spikes
        best.offer(loss.error(values) + penalty)


def _surrogate_step(neurons, loss: _Loss, opt, config, best, whole: _Loss | None = None) -> Tensor:
    """One step on {θ, h}; the loss curve records the error, the best snapshot the objective
    (only when ``loss`` is the ``whole`` loss: a slice's error is not comparable)."""
    opt.zero_grad(set_to_none=True)
    values, count = neurons.surrogate_values(loss.magnitude, config.sharpness)
    error = loss.error(values)
    objective = error
    if loss.penalty is not None:
        best.spikes = count.detach().mean(1)
        objective = error + loss.penalty * count.mean(1)
    if whole is None or loss is whole:
        best.offer(objective.detach())
    objective.sum().backward()
    opt.step()
    neurons.clamp_()
    return error.detach()


def _base_step(neurons, stats, opt, best, penalty) -> Tensor:
    """One step on B: spikes do not move, so the energy term is the last surrogate step's."""
    opt.zero_grad(set_to_none=True)
    loss = quadratic_loss(neurons.weights(), stats)
    best.offer(loss.detach() if penalty is None else loss.detach() + penalty * best.spikes)
    loss.sum().backward()
    opt.step()
    neurons.clamp_()
    return loss.detach()


class _Best:
    """Per-site snapshot of the parameters with the lowest loss seen (surrogate steps can
    overshoot; the paper's Theorem 2 only bounds the error up to a constant)."""

    def __init__(self, neurons: PhaseNeurons):
        self.neurons = neurons
        self.params = [p for p in neurons.parameters()]
        self.saved = [p.detach().clone() for p in self.params]
        self.loss = torch.full(
            (neurons.reference.shape[0],), float("inf"), device=neurons.reference.device
        )
        self.spikes = torch.zeros_like(self.loss)  # spikes per neuron at the last θ/h step

    def offer(self, loss: Tensor) -> None:
        better = loss < self.loss
        if better.any():
            self.loss = torch.where(better, loss, self.loss)
            for saved, p in zip(self.saved, self.params, strict=True):
                saved[better] = p.detach()[better]

    def restore(self) -> None:
        with torch.no_grad():
            for saved, p in zip(self.saved, self.params, strict=True):
                p.copy_(saved)
