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
its squared error (``simulation.budget``). The B steps do not move spikes, so they keep the
MSE. With a ``SpikeBudget`` the λ_s are μ·unit_s and the price μ follows the budget by dual
ascent: after each round it is scaled up while the neurons' spike energy (hard counts, every
sample) is over the budget and down while it is under. Every round's parameters are kept,
and at the end each site takes its round at the lowest μ whose choice meets the budget, so
one training lands on the budget instead of on a price guessed before training.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from phasecode.coding.table import CodeTable
from phasecode.errors import PhasecodeError
from phasecode.settings import TrainConfig
from phasecode.training.lagrangian import lowest_price
from phasecode.training.neurons import (
    PhaseNeurons,
    quadratic_loss,
    spike_statistics,
)
from phasecode.training.objective import site_error
from phasecode.training.uniform import best_step

PRICE_RATE = 2.0  # dual ascent: log μ moves by this × the budget's projected excess per round
PRICE_STEP = 0.3  # ... by at most this much (×1.35) per round
PRICE_LOOKAHEAD = 3.0  # rounds the spend's trend is projected ahead (spikes lag the price)


@dataclass(frozen=True)
class SpikeBudget:
    """What the sites' spikes may cost: Σ_s energy_s · (spikes per neuron)_s ≤ allowed."""

    energy: Tensor  # [S] energy of one spike per neuron at each site (pJ per token)
    allowed: float  # pJ per token

    def spent(self, spikes: Tensor) -> float:
        return float((self.energy.to(spikes) * spikes).sum())


@dataclass
class _Price:
    """λ_s = μ·unit_s in normalised units; μ fixed at 1, or steered towards ``budget``."""

    unit: Tensor  # [S]
    budget: SpikeBudget | None = None
    value: float = 1.0
    history: list[float] = field(default_factory=list)
    spent: float | None = None  # the spikes' energy after the last round

    @property
    def penalty(self) -> Tensor:
        return self.value * self.unit

    def start(self, error: Tensor, spikes: Tensor) -> None:
        """μ at which the median site's energy term equals its error at the start point (the
        dual ascent then finds the budget's μ, 10–10³ times that on SmolLM2, in ~20 rounds)."""
        tiny = torch.finfo(error.dtype).tiny
        scale = error / (self.unit * spikes).clamp_min(tiny)
        self.value = float(scale.median().clamp_min(tiny))
        self.history.append(self.value)

    def follow(self, spikes: Tensor) -> None:
        """One dual-ascent step on log μ, on the spend projected ``PRICE_LOOKAHEAD`` rounds on."""
        spent = self.budget.spent(spikes)
        trend = 0.0 if self.spent is None else spent - self.spent
        self.spent = spent
        excess = (spent + PRICE_LOOKAHEAD * trend) / max(self.budget.allowed, 1e-30) - 1
        self.value *= math.exp(max(-PRICE_STEP, min(PRICE_STEP, PRICE_RATE * excess)))
        self.history.append(self.value)


class _Trajectory:
    """Every round's parameters with their exact error and spikes on all samples. Under a
    rising price each site walks down its error–spike curve; at the end every site takes the
    point minimising error + μ·unit·spikes, μ bisected so the spikes meet the budget: exact
    where the dual ascent alone lags (spikes follow the price over several rounds)."""

    def __init__(self, neurons: PhaseNeurons):
        self.params = list(neurons.parameters())
        self.saved: list[list[Tensor]] = []
        self.errors: list[Tensor] = []
        self.spikes: list[Tensor] = []

    def record(self, neurons: PhaseNeurons, stats) -> None:
        with torch.no_grad():
            self.errors.append(quadratic_loss(neurons.weights(), stats))
        self.spikes.append(stats.spikes)
        self.saved.append([p.detach().clone() for p in self.params])

    def choose(self, price: _Price) -> None:
        """Restore each site's point at the lowest μ whose points meet the budget (the
        sparsest points when none does) and leave that μ as the price (the highest μ the
        dual ascent tried when none does)."""
        # float64: μ·unit·spikes at the largest μ tried overflows float32, and an all-inf
        # column's argmin is the first round, the costliest point
        error = torch.stack(self.errors).double()  # [R, S]
        spikes = torch.stack(self.spikes).double()
        unit = price.unit.to(error)[None]

        def pick(mu: float) -> tuple[Tensor, float]:
            index = (error + mu * unit * spikes).argmin(0)
            return index, price.budget.spent(spikes.gather(0, index[None])[0])

        high, index, _, met = lowest_price(pick, price.budget.allowed, max(price.history))
        if not met:
            sparsest = spikes == spikes.min(0, keepdim=True).values
            index = error.masked_fill(~sparsest, math.inf).argmin(0)
            high = max(price.history)
        price.value = high
        price.history.append(high)
        sites = torch.arange(index.numel(), device=index.device)
        with torch.no_grad():
            for position, p in enumerate(self.params):
                p.copy_(torch.stack([saved[position] for saved in self.saved])[index, sites])


@dataclass
class TrainResult:
    """Trained tables (in the samples' own units) and the per-site loss curve."""

    table: CodeTable
    loss_curve: Tensor  # [S, steps], normalised units (MSE / max|x|²)
    phases: list[str] = field(default_factory=list)  # "threshold" | "base" | "joint" per step
    prices: list[float] = field(default_factory=list)  # μ per round under a SpikeBudget


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
    spike_budget: SpikeBudget | None = None,
) -> TrainResult:
    """Fit one neuron per row of ``samples`` [S, N] with the given per-site allocations.
    ``spike_cost`` [S]: the energy term's λ_s, in units of the samples' squared values (with
    ``spike_budget``: λ_s per unit price, the price then found by dual ascent);
    ``weight`` [S, N]: per-sample loss weights (mean 1 per site; the Fisher objective);
    ``bias`` [S]: κ_s of a κ·(mean error)² term (errors that add up coherently downstream)."""
    config = config or TrainConfig()
    scale = site_scale(samples)
    magnitude = (samples / scale[:, None]).abs()
    neurons = init_neurons(magnitude, allocation, config.mode == "coupled", signed, weight)
    if spike_budget is not None and (spike_cost is None or config.mode == "joint"):
        raise PhasecodeError("a spike budget needs spike costs and an alternating mode")
    price = None if spike_cost is None else _Price(spike_cost / scale.pow(2), spike_budget)
    loss = _Loss(magnitude, price, weight, bias)
    curve, phases = _optimise(neurons, config, progress, loss)
    table = neurons.frozen_table().scaled(scale)
    prices = [] if price is None else price.history
    return TrainResult(table, torch.stack(curve, 1), phases, prices)


@dataclass
class _Loss:
    """What Alg. 1 minimises: the (weighted) squared error on the normalised magnitudes, plus
    ``penalty`` [S] per expected spike when training is energy-aware."""

    magnitude: Tensor  # [S, N]
    price: _Price | None  # shared by the slices
    weight: Tensor | None  # [S, N], mean 1 per site
    bias: Tensor | None = None  # [S] κ of the κ·(mean error)² term

    @property
    def penalty(self) -> Tensor | None:
        return None if self.price is None else self.price.penalty

    def error(self, values: Tensor) -> Tensor:
        return site_error(values, self.magnitude, self.weight, self.bias)

    def slices(self, size: int | None) -> list[_Loss]:
        """This loss on N/size equal slices of the samples (every sample in exactly one);
        [itself] if ``size`` is None or covers all samples."""
        parts = 1 if size is None else max(1, round(self.magnitude.shape[1] / size))
        if parts == 1:
            return [self]
        # contiguous copies: the fused kernels take one memory layout (training/dynamics.py)
        magnitudes = [m.contiguous() for m in self.magnitude.tensor_split(parts, dim=1)]
        weights = [None] * parts
        if self.weight is not None:
            weights = [w.contiguous() for w in self.weight.tensor_split(parts, dim=1)]
        return [
            _Loss(magnitude, self.price, weight, self.bias)
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
    budgeted = loss.price is not None and loss.price.budget is not None
    trajectory = _Trajectory(neurons) if budgeted else None
    if budgeted:
        stats = spike_statistics(loss.magnitude, neurons.frozen_table(), loss.weight, loss.bias)
        loss.price.start(quadratic_loss(neurons.weights().detach(), stats), stats.spikes)
        trajectory.record(neurons, stats)
    if len(slices) > 1:
        _offer_start(neurons, loss, config, best)  # θ/h steps on slices offer nothing
    batches = itertools.cycle(slices)
    for _ in tqdm(range(config.rounds), desc="training", unit="round", disable=not progress):
        for _ in range(config.threshold_steps):
            curve.append(_surrogate_step(neurons, next(batches), opt_spike, config, best, loss))
            phases.append("threshold")
        stats = spike_statistics(loss.magnitude, neurons.frozen_table(), loss.weight, loss.bias)
        best.spikes = stats.spikes  # the B steps move no spike: they offer these counts
        if budgeted:
            loss.price.follow(stats.spikes)
        for _ in range(config.base_steps):
            curve.append(_base_step(neurons, stats, opt_base, best, loss.penalty))
            phases.append("base")
        if budgeted:
            trajectory.record(neurons, stats)
    if budgeted:
        trajectory.choose(loss.price)
    else:
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
    overshoot; the paper's Theorem 2 only bounds the error up to a constant). Under a spike
    budget the price moves, so ``_Trajectory`` chooses instead."""

    def __init__(self, neurons: PhaseNeurons):
        self.neurons = neurons
        self.params = [p for p in neurons.parameters()]
        self.saved = [p.detach().clone() for p in self.params]
        self.loss = torch.full(
            (neurons.reference.shape[0],), float("inf"), device=neurons.reference.device
        )
        self.spikes = torch.zeros_like(self.loss)  # spikes per neuron of the current θ/h

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
