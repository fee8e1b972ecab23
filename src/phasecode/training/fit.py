"""Fitting one neuron per site by the chosen method, and scoring it on held-out samples
against the Lloyd-Max bound and the best uniform quantizer (both fitted on the same training
half)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from phasecode.coding import baselines
from phasecode.coding.allocation import even_allocation
from phasecode.coding.neuron import spikes, value
from phasecode.coding.table import CodeTable, concat_tables
from phasecode.errors import PhasecodeError
from phasecode.settings import FitSettings
from phasecode.training.alternating import SpikeBudget, train_neurons
from phasecode.training.objective import squared_error
from phasecode.training.scale_fit import fit_tau
from phasecode.training.search import search_allocation
from phasecode.training.yardstick import lloyd_max_mse, uniform_mse


@dataclass
class FitResult:
    table: CodeTable
    loss_curve: Tensor | None  # [S, steps] for trained codes (Figure 4)
    seconds: float
    loss_phases: list[str] = field(default_factory=list)  # which parameters each step moved
    prices: list[float] = field(default_factory=list)  # μ per round under a spike budget


def fit_codes(
    train: Tensor,
    settings: FitSettings,
    progress: bool = True,
    steps: Tensor | None = None,
    spike_cost: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    spike_budget: SpikeBudget | None = None,
) -> FitResult:
    """One code table row per site, by the chosen method.

    ``steps`` [S] gives each site its own T (≤ ``settings.timesteps``; default: all use it):
    sites of equal T train together and the table is padded to the largest. ``spike_cost``
    [S] turns on energy-aware training and ``weight`` [S, N] weighs each training sample's
    error (the Fisher objective); ``bias`` [S] adds κ_s·(mean error)²; ``spike_budget`` holds
    the spikes' total energy to a budget, ``spike_cost`` then being λ_s per unit price (all
    mgpc only, ``train_neurons``; the budget needs one T for every site)."""
    start = time.perf_counter()
    if steps is None:
        steps = torch.full((train.shape[0],), settings.timesteps, dtype=torch.long)
    if spike_cost is not None and settings.method != "mgpc":
        raise PhasecodeError("energy-aware training needs --method mgpc")
    if weight is not None and settings.method != "mgpc":
        raise PhasecodeError("a weighted objective needs --method mgpc")
    if spike_budget is not None and len(set(steps.tolist())) > 1:
        raise PhasecodeError("a spike budget trains every site at one T")
    parts, order, curves, phases, prices = [], [], [], [], []
    for t in sorted(set(steps.tolist()), reverse=True):
        index = (steps == t).nonzero()[:, 0].to(train.device)
        cost = None if spike_cost is None else spike_cost.to(train.device)[index]
        group_weight = None if weight is None else weight.to(train)[index]
        group_bias = None if bias is None else bias.to(train)[index]
        table, curve, phases, prices = _fit_group(
            train[index], settings, t, progress, cost, group_weight, group_bias, spike_budget
        )
        parts.append(table)
        order.append(index)
        curves.append(curve)
    position = torch.cat(order).argsort()
    table = concat_tables(parts).select(position)
    curve = None if curves[0] is None else torch.cat(curves)[position]
    return FitResult(table, curve, time.perf_counter() - start, phases, prices)


def _fit_group(
    train: Tensor,
    settings: FitSettings,
    t: int,
    progress: bool,
    spike_cost: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    spike_budget: SpikeBudget | None = None,
) -> tuple[CodeTable, Tensor | None, list[str], list[float]]:
    """Sites that share one T."""
    signed = settings.code == "signed-digit"
    if settings.method == "mgpc":
        grains = min(settings.grains, t)
        if grains > 1:
            allocation, _ = search_allocation(
                train, t, grains, settings.train, signed, weight, bias
            )
        else:
            allocation = [even_allocation(t, 1)] * train.shape[0]
        result = train_neurons(
            train,
            allocation,
            settings.train,
            progress,
            signed,
            spike_cost,
            weight,
            bias,
            spike_budget,
        )
        return result.table, result.loss_curve, result.phases, result.prices
    if settings.method == "phase":
        return baselines.phase(train.shape[0], t), None, [], []
    build = baselines.FIXED_CODES[settings.method]
    return build(fit_tau(settings.method, train, t, build), t), None, [], []


def largest_output(table: CodeTable) -> Tensor:
    """[S] each neuron's output for an input far beyond its range: where it saturates."""
    beyond = 2 * (table.reset.abs().sum(1) + table.threshold.abs().amax(1)) + 1
    return value(beyond[:, None], table)[:, 0]


def reach_peaks(table: CodeTable, peaks: Tensor, strength: float = 1.0) -> CodeTable:
    """``table`` with every neuron that saturates below its site's ``peaks`` [S] widened by
    (peak / saturation)^``strength``: 1 reaches the peak, 0 keeps the neuron. θ, h and d
    scale together, under which the code is exact (SN_{f·table}(x) = f·SN_table(x/f)): the
    fitted shape of the levels stays, only the point where the neuron saturates moves."""
    top = largest_output(table)
    shortfall = (peaks.to(top) / top.clamp_min(torch.finfo(top.dtype).tiny)).clamp_min(1.0)
    return table.scaled(shortfall.pow(strength))


def score_sites(
    table: CodeTable, train: Tensor, heldout: Tensor, heldout_weight: Tensor | None = None
) -> dict[str, Tensor]:
    """Held-out MSE and spikes per neuron of the neurons, and the MSE of both yardsticks
    fitted on ``train`` (at each site's own T); with ``heldout_weight`` also the weighted MSE
    the Fisher objective minimises."""
    coded = value(heldout, table)
    mse = (coded - heldout).pow(2).mean(1)
    fired = spikes(heldout, table.to(device=heldout.device)) != 0
    bound, uniform = torch.empty_like(mse), torch.empty_like(mse)
    for t in set(table.steps.tolist()):
        index = (table.steps == t).nonzero()[:, 0].to(train.device)
        bound[index] = lloyd_max_mse(train[index], heldout[index], t)
        uniform[index] = uniform_mse(train[index], heldout[index], t)
    tiny = torch.finfo(mse.dtype).tiny
    weighted = {}
    if heldout_weight is not None:
        weighted["fisher_mse"] = squared_error(coded, heldout, heldout_weight.to(heldout))
    return weighted | {
        "mse": mse,
        "mean_error": (coded - heldout).mean(1),
        "spikes": fired.sum(0).to(mse.dtype).mean(1),
        "lloyd_max_mse": bound,
        "ratio": mse / bound.clamp_min(tiny),
        "uniform_mse": uniform,
        "uniform_ratio": uniform / bound.clamp_min(tiny),
    }
