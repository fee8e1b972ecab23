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
from phasecode.coding.neuron import value
from phasecode.coding.table import CodeTable
from phasecode.settings import FitSettings
from phasecode.training.alternating import train_neurons
from phasecode.training.scale_fit import fit_tau
from phasecode.training.search import search_allocation
from phasecode.training.yardstick import lloyd_max_mse, uniform_mse


@dataclass
class FitResult:
    table: CodeTable
    loss_curve: Tensor | None  # [S, steps] for trained codes (Figure 4)
    seconds: float
    loss_phases: list[str] = field(default_factory=list)  # which parameters each step moved


def fit_codes(train: Tensor, settings: FitSettings, progress: bool = True) -> FitResult:
    """One code table row per site, by the chosen method."""
    start = time.perf_counter()
    sites, t = train.shape[0], settings.timesteps
    curve, phases = None, []
    if settings.method == "mgpc":
        if settings.grains > 1:
            allocation, _ = search_allocation(train, t, settings.grains, settings.train)
        else:
            allocation = [even_allocation(t, 1)] * sites
        result = train_neurons(train, allocation, settings.train, progress=progress)
        table, curve, phases = result.table, result.loss_curve, result.phases
    elif settings.method == "phase":
        table = baselines.phase(sites, t)
    else:
        build = baselines.FIXED_CODES[settings.method]
        table = build(fit_tau(settings.method, train, t, build), t)
    return FitResult(table, curve, time.perf_counter() - start, phases)


def score_sites(table: CodeTable, train: Tensor, heldout: Tensor) -> dict[str, Tensor]:
    """Held-out MSE of the neurons and of both yardsticks fitted on ``train``."""
    t = table.timesteps
    mse = (value(heldout, table) - heldout).pow(2).mean(1)
    bound = lloyd_max_mse(train, heldout, t)
    uniform = uniform_mse(train, heldout, t)
    tiny = torch.finfo(mse.dtype).tiny
    return {
        "mse": mse,
        "lloyd_max_mse": bound,
        "ratio": mse / bound.clamp_min(tiny),
        "uniform_mse": uniform,
        "uniform_ratio": uniform / bound.clamp_min(tiny),
    }
