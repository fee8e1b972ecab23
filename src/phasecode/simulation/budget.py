"""Converting under an energy budget: a price on spikes found in training, or timesteps per
site chosen by a knapsack over (Δloss, Δenergy) per site.

Price mode (the default): every site keeps T, and Alg. 1 minimises ½·F_s·MSE_s + μ·energy_s
with μ moved by dual ascent until the spikes' predicted energy meets the budget
(``training.alternating.SpikeBudget``). On SmolLM2 at budget 0.85 it beat the knapsack
(docs/energy.md): time steps are cheap under the counting rules (the per-step work is ~6 % of
the ANN at T=8), spikes are not, and a trained neuron spends them far better than the
knapsack's untrained options predict.

Knapsack mode:
For every site and every candidate T the untrained neuron of that T (the start point of
Alg. 1, so no training is spent on options that lose) is scored on held-out samples: its MSE
and its spikes per neuron. ``conversion.sensitivity`` turns MSE into predicted loss per token
(½·F_s·MSE) and ``simulation.estimate`` turns spikes into energy per token. Minimising
Σ Δloss subject to Σ energy ≤ budget is a multiple-choice knapsack; its Lagrangian relaxation
(each site picks argmin Δloss + μ·energy, μ found by bisection) solves it on the convex hull
of each site's curve, which is where greedy-by-marginal-loss-per-joule ends too. The same μ
prices a spike in the energy-aware training objective (``spike_costs``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from phasecode.coding.neuron import spikes, value
from phasecode.conversion.convert import (
    Calibrated,
    SpikingModel,
    Train,
    coded_nll,
    probs_bias,
    scoring_windows,
)
from phasecode.conversion.reconstruct import reconstruct
from phasecode.models.sites import site_kind
from phasecode.settings import EnergyBudget, FitSettings
from phasecode.simulation.energy import load_costs
from phasecode.simulation.estimate import SiteEnergy, site_energy
from phasecode.training.alternating import SpikeBudget, init_neurons, site_scale
from phasecode.training.lagrangian import lowest_price
from phasecode.training.objective import site_error

OPTION_SAMPLES = 2048  # held-out samples per site used to score the options
MISS_TOLERANCE = 0.01  # a prediction this far (relative) over the budget still meets it
# a site kind's measured loss over its Fisher prediction is trusted within these bounds:
# below 1 the measurement is mostly its noise and the cancellations between sites, and an
# unbounded factor would let one noisy kind take the whole budget
SENSITIVITY_FACTORS = (1.0, 16.0)


@dataclass(frozen=True)
class SiteOptions:
    """Per site and candidate T: the predicted loss per token and spikes per neuron."""

    timesteps: tuple[int, ...]  # candidate T, ascending
    loss: Tensor  # [S, K] ½·F_s·MSE_s(T)
    spikes: Tensor  # [S, K] spikes per neuron

    def energy(self, energy: SiteEnergy) -> Tensor:
        """[S, K] energy per token of each option (its spikes and its per-step work)."""
        steps = torch.tensor(self.timesteps, dtype=torch.float64)
        spiking = self.spikes * (energy.width * energy.spike_pj)[:, None]
        return spiking + energy.step_pj[:, None] * steps[None, :]


def site_options(
    heldout: Tensor,
    sensitivity: Tensor,
    timesteps: range,
    signed: bool,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
) -> SiteOptions:
    """Score the start-point neuron of every T in ``timesteps`` on every site: its MSE, with
    ``weight`` [S, N] for the held-out samples its Fisher-weighted MSE, with ``bias`` [S]
    plus κ·(mean error)² (the training objective's terms)."""
    samples = heldout[:, :OPTION_SAMPLES].double()
    weight = None if weight is None else weight[:, :OPTION_SAMPLES].to(samples)
    bias = None if bias is None else bias.to(samples)
    scale = site_scale(samples)
    magnitude = (samples / scale[:, None]).abs()
    losses, counts = [], []
    for t in timesteps:
        neurons = init_neurons(magnitude, [(t,)] * samples.shape[0], False, signed)
        table = neurons.frozen_table().scaled(scale)
        mse = site_error(value(samples, table), samples, weight, bias)
        losses.append(0.5 * sensitivity.to(mse) * mse)
        counts.append((spikes(samples, table) != 0).sum(0).double().mean(1))
    return SiteOptions(tuple(timesteps), torch.stack(losses, 1).cpu(), torch.stack(counts, 1).cpu())


@dataclass(frozen=True)
class BudgetChoice:
    """What the knapsack chose: T per site, the price of energy μ and the predicted ratio."""

    steps: Tensor  # [S] long
    price: float  # μ, loss per picojoule
    predicted_ratio: float
    reachable: bool  # False: even the cheapest options exceed the budget

    def spike_costs(self, sensitivity: Tensor, energy: SiteEnergy) -> Tensor:
        """λ_s for ``train_neurons`` at this choice's price."""
        return spike_prices(sensitivity, energy, self.price)


def spike_prices(sensitivity: Tensor, energy: SiteEnergy, price: float) -> Tensor:
    """λ_s: the energy of one spike per neuron (width_s spikes per token) at price μ, in units
    of the site's squared error: the loss is ½·F_s·MSE_s per token, so one spike per neuron is
    worth μ·width_s·c_s / (½·F_s) of MSE."""
    weight = (0.5 * sensitivity).clamp_min(torch.finfo(torch.float64).tiny)
    return (price * energy.width * energy.spike_pj / weight).float()


def choose_steps(options: SiteOptions, energy: SiteEnergy, budget: float) -> BudgetChoice:
    """The options minimising predicted loss with predicted total energy ratio ≤ ``budget``."""
    cost = options.energy(energy)

    def pick(price: float) -> tuple[Tensor, float]:
        index = (options.loss + price * cost).argmin(1)
        steps = torch.tensor(options.timesteps)[index]
        rate = options.spikes.gather(1, index[:, None])[:, 0]
        return steps, energy.ratio(rate, steps)

    guess = float(options.loss.max() / cost.min().clamp_min(1e-30))
    price, steps, ratio, reachable = lowest_price(pick, budget, guess)
    return BudgetChoice(steps, price, ratio, reachable)


@dataclass
class BudgetPlan:
    """Per-site T and spike prices chosen for an energy budget, and how they were chosen."""

    budget: EnergyBudget
    energy: SiteEnergy
    options: SiteOptions
    sensitivity: Tensor
    choice: BudgetChoice
    seconds: float
    passes: int = 1

    @property
    def steps(self) -> Tensor:
        return self.choice.steps

    @property
    def spike_costs(self) -> Tensor | None:
        """λ_s for training; None when the budget is met without pricing spikes."""
        if self.choice.price == 0:
            return None
        return self.choice.spike_costs(self.sensitivity, self.energy)

    def corrected(self, trained_spikes: Tensor) -> BudgetPlan:
        """The knapsack again, each site's spike counts scaled by how far its trained neuron
        fired from its start point (training moves thresholds, usually towards more spikes)."""
        index = torch.tensor([self.options.timesteps.index(t) for t in self.steps.tolist()])
        start = self.options.spikes.gather(1, index[:, None])[:, 0]
        factor = (trained_spikes / start.clamp_min(1e-6)).clamp(0.5, 2.0)
        options = replace(self.options, spikes=self.options.spikes * factor[:, None])
        choice = choose_steps(options, self.energy, self.budget.ratio)
        return replace(self, options=options, choice=choice, passes=self.passes + 1)

    def report(self, trained_spikes: Tensor) -> dict:
        """The report's record: the budget, the choice and the trained model's prediction."""
        steps = self.steps
        predicted = self.energy.ratio(trained_spikes, steps)
        return {
            **asdict(self.budget),
            "reachable": self.choice.reachable,
            "met": self.choice.reachable
            and _met(
                self.budget,
                predicted,
                "trained neurons fired more than planned, twice: a lower --min-timesteps",
            ),
            "passes": self.passes,
            "price_per_pj": self.choice.price,
            "predicted_ratio_untrained": self.choice.predicted_ratio,
            "predicted_ratio": predicted,
            "steps_histogram": {
                str(t): int((steps == t).sum()) for t in sorted(set(steps.tolist()))
            },
        }


def budget_plan(
    calibrated: Calibrated, fit: FitSettings, budget: EnergyBudget, progress: bool = True
) -> BudgetPlan:
    """Sensitivity, predicted energy and the knapsack's choice of T per site."""
    start = time.perf_counter()
    c = calibrated
    probe = c.sensitivity(progress)
    sensitivity = probe.fisher
    weight = probe.weights(c.heldout) if fit.objective == "fisher" else None
    energy = _site_energy(c, budget)
    low = min(budget.min_timesteps, fit.timesteps)
    signed = fit.code == "signed-digit"
    bias = probs_bias(c.sites, fit)
    options = site_options(
        c.heldout, sensitivity, range(low, fit.timesteps + 1), signed, weight, bias
    )
    choice = choose_steps(options, energy, budget.ratio)
    if not choice.reachable:
        warnings.warn(
            f"energy budget {budget.ratio} is out of reach: the cheapest timesteps predict "
            f"{choice.predicted_ratio:.3f}; converting with those",
            stacklevel=2,
        )
    return BudgetPlan(budget, energy, options, sensitivity, choice, time.perf_counter() - start)


@dataclass(frozen=True)
class BudgetStrategy:
    """``fit_spiking``'s strategy under an energy budget, by its mode; the report's
    ``energy_budget`` says what was chosen and predicted."""

    budget: EnergyBudget

    def fit(
        self, calibrated: Calibrated, fit: FitSettings, progress: bool, train: Train
    ) -> SpikingModel:
        if self.budget.mode == "price":
            return _fit_at_price(calibrated, fit, self.budget, progress, train)
        return _fit_by_knapsack(calibrated, fit, self.budget, progress, train)


def budget_strategy(budget: EnergyBudget | None) -> BudgetStrategy | None:
    """The strategy for ``budget`` (None: no budget, every site at T)."""
    return None if budget is None else BudgetStrategy(budget)


def _fit_at_price(
    calibrated: Calibrated, fit: FitSettings, budget: EnergyBudget, progress: bool, train: Train
) -> SpikingModel:
    """Every site at T; training holds the spikes' energy to what the budget leaves after the
    fixed per-step work."""
    start = time.perf_counter()
    c = calibrated
    sensitivity = c.sensitivity(progress).fisher
    energy = _site_energy(c, budget)
    steps = torch.full((len(c.sites),), fit.timesteps, dtype=torch.long)
    fixed = energy.spike_free_pj(steps)
    allowed = budget.ratio * energy.ann_pj - fixed
    if allowed <= 0:
        warnings.warn(
            f"energy budget {budget.ratio} is out of reach at T={fit.timesteps}: the work "
            f"without any spike already costs {fixed / energy.ann_pj:.3f}; spikes are priced "
            "as high as training goes",
            stacklevel=2,
        )
    spike_budget = SpikeBudget(energy.width * energy.spike_pj, max(allowed, 0.0))
    seconds = time.perf_counter() - start
    spiking = train(None, spike_prices(sensitivity, energy, 1.0), spike_budget)
    correction = {"source": "fisher"}
    if budget.measures_sensitivity:
        start = time.perf_counter()
        factors, correction = measured_sensitivity(c, spiking, sensitivity, progress)
        seconds += time.perf_counter() - start
        first = spiking.report["seconds"]["training"]
        spiking = train(None, spike_prices(sensitivity * factors, energy, 1.0), spike_budget)
        spiking.report["seconds"]["training"] += first
    trained = _trained_spikes(spiking)
    prices = spiking.report["spike_prices"]
    predicted = energy.ratio(trained, steps)
    spiking.report["energy_budget"] = {
        **asdict(budget),
        "reachable": allowed > 0,
        "met": allowed > 0
        and _met(
            budget,
            predicted,
            "training could not cut enough spikes in its rounds: more --rounds, a shorter "
            "--timesteps, which leaves spikes more of the budget, or --budget-mode knapsack",
        ),
        "price_per_pj": prices[-1] if prices else 0.0,
        "predicted_ratio": predicted,
        "steps_histogram": {str(fit.timesteps): len(c.sites)},
        "sensitivity": correction,
    }
    spiking.report["seconds"]["budget"] = seconds
    return spiking


def reconstruct_within_budget(
    c: Calibrated, spiking: SpikingModel, how: str, budget: EnergyBudget, progress: bool = True
) -> None:
    """Reconstruction (``conversion.reconstruct``, ``how`` = "block" or "output") with the
    tuned neurons' spike energy (per layer, or of the whole model) held to what the budget
    leaves: the fitted neurons' times the headroom between their predicted spike energy and
    the budget's allowance. Then the budget's prediction is made again from the tuned
    neurons' held-out spikes (the report's ``predicted_ratio``; the fitted neurons' is kept
    as ``predicted_ratio_fitted``)."""
    energy = _site_energy(c, budget)
    steps = spiking.table.steps
    fixed = energy.spike_free_pj(steps) / energy.ann_pj
    record = spiking.report["energy_budget"]
    # what the fitted neurons left of the spikes' share (a range widened after training
    # drops spikes the budget allowed): the tuning may spend it
    spent = record["predicted_ratio"] - fixed
    headroom = max((budget.ratio - fixed) / spent, 1.0) if spent > 0 else 1.0
    spiking.report["reconstruction"] = reconstruct(
        c, spiking, how, progress, energy.spike_pj, headroom
    ) | {"headroom": headroom}
    predicted = energy.ratio(_trained_spikes(spiking), steps)
    record["predicted_ratio_fitted"] = record["predicted_ratio"]
    record["predicted_ratio"] = predicted
    record["met"] = record["met"] and _met(
        budget,
        predicted,
        "the reconstructed neurons fire more on held-out samples than on the calibration "
        "tokens they were held to",
    )


def measured_sensitivity(
    c: Calibrated, spiking: SpikingModel, fisher: Tensor, progress: bool
) -> tuple[Tensor, dict]:
    """Per site, a factor on F_s from what ``spiking``'s neurons cost: each site kind alone
    is coded on unsampled calibration text, and the NLL it adds over the prepared ANN is set
    against Σ ½·F_s·MSE_s over its sites. The Fisher estimate assumes each element's error
    independent of its gradient and of the other elements' errors; where that fails (on
    SmolLM2: the attention probabilities and the SiLU·up product's operands, docs/energy.md)
    it underprices a kind's errors, and the price mode then takes spikes where they cost the
    most loss. The factor is
    the measured ratio within ``SENSITIVITY_FACTORS``, the same for every site of a kind."""
    windows, where = scoring_windows(c)
    mse = torch.tensor([row["mse"] for row in spiking.report["sites"]], dtype=torch.float64)
    predicted = 0.5 * fisher.double().cpu() * mse
    kinds = list(dict.fromkeys(site_kind(s) for s in c.sites))
    base = c.prepared_nll()
    factors = torch.ones(len(c.sites), dtype=torch.float64)
    rows = {}
    low, high = SENSITIVITY_FACTORS
    for kind in tqdm(kinds, desc="sensitivity by kind", unit="kind", disable=not progress):
        index = [i for i, s in enumerate(c.sites) if site_kind(s) == kind]
        only = {c.sites[i] for i in index}
        added = coded_nll(c, spiking.table, windows, only=only).double().cpu() - base
        expected = float(predicted[index].sum())
        measured = float(added.mean())
        # no predicted loss: any measured loss is underpriced without bound
        fallback = high if measured > 0 else low
        ratio = measured / expected if expected > 0 else fallback
        factors[index] = min(max(ratio, low), high)
        spread = float(added.std()) / len(added) ** 0.5 if len(added) > 1 else 0.0
        rows[kind] = {
            "predicted": expected,
            "measured": measured,
            "standard_error": spread,
            "factor": float(factors[index[0]]),
        }
    return factors, {"source": "measured", "windows": f"{len(windows)} {where}", "kinds": rows}


def _met(budget: EnergyBudget, predicted: float, why: str) -> bool:
    """Whether the trained neurons' predicted energy meets ``budget`` (within
    ``MISS_TOLERANCE``); a warning says so when it does not, so a missed budget never passes
    for a met one."""
    met = predicted <= budget.ratio * (1 + MISS_TOLERANCE)
    if not met:
        warnings.warn(
            f"energy budget {budget.ratio} was missed: the trained neurons predict "
            f"{predicted:.3f}; {why}",
            stacklevel=3,
        )
    return met


def _fit_by_knapsack(
    calibrated: Calibrated, fit: FitSettings, budget: EnergyBudget, progress: bool, train: Train
) -> SpikingModel:
    """Plan, train, and when the trained neurons' predicted energy misses the budget, plan
    once more from their spike counts and train again."""
    plan = budget_plan(calibrated, fit, budget, progress)
    spiking = train(plan.steps, plan.spike_costs)
    trained = _trained_spikes(spiking)
    if plan.choice.reachable and plan.energy.ratio(trained, plan.steps) > budget.ratio:
        start = time.perf_counter()
        plan = plan.corrected(trained)
        plan.seconds += time.perf_counter() - start
        seconds = spiking.report["seconds"]["training"]
        spiking = train(plan.steps, plan.spike_costs)
        spiking.report["seconds"]["training"] += seconds
        trained = _trained_spikes(spiking)
    spiking.report["energy_budget"] = plan.report(trained)
    spiking.report["seconds"]["budget"] = plan.seconds
    return spiking


def _site_energy(c: Calibrated, budget: EnergyBudget) -> SiteEnergy:
    """Per-site energy terms of the prepared model on the budget's window."""
    prefix = len(c.prepared.prefix) if c.prepared.prefix is not None else 0
    rotations = (c.prepared.down_rotation is not None, c.prepared.head_rotation is not None)
    return site_energy(
        c.model, c.sites, load_costs(budget.costs), budget.context, prefix, rotations
    )


def _trained_spikes(spiking: SpikingModel) -> Tensor:
    """Held-out spikes per neuron of each site (the conversion report's scores)."""
    return torch.tensor([row["spikes"] for row in spiking.report["sites"]], dtype=torch.float64)
