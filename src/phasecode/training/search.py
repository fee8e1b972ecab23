"""Alg. 2 (App. C): differentiable search of each site's timestep allocation across grains.

Every candidate allocation of T steps over n grains becomes one extra neuron per site, so the
search is one batch of S×C neurons. Each iteration runs Alg. 1 with N1 = N2 = 1 on every
candidate (each candidate minimises its own MSE: the inner problem of Eq. 58 solved per
candidate, which keeps the candidates from co-adapting through the mixture), then takes one
gradient step on the architecture weights α of the softmax mixture ō(x) = Σ softmax(α)_o·o(x)
(Eq. 56-57). The allocation with the largest α wins; the caller retrains it with full Alg. 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from phasecode.coding.allocation import candidate_allocations
from phasecode.training.alternating import TrainConfig, init_neurons, site_scale
from phasecode.training.neurons import quadratic_loss, spike_statistics


def search_allocation(
    samples: Tensor,
    timesteps: int,
    grains: int,
    config: TrainConfig | None = None,
    signed: bool = False,
) -> tuple[list[tuple[int, ...]], Tensor]:
    """Pick one allocation per site; returns them and the final α [S, C]."""
    config = config or TrainConfig()
    candidates = candidate_allocations(timesteps, grains)
    sites, count = samples.shape[0], len(candidates)
    if count == 1:
        return [candidates[0]] * sites, torch.zeros(sites, 1, device=samples.device)
    subset = samples[:, : config.search_samples]
    magnitude = (subset / site_scale(subset)[:, None]).abs()
    stacked = magnitude.repeat(count, 1)  # candidate-major: rows c*S .. c*S+S-1
    allocation = [c for c in candidates for _ in range(sites)]
    neurons = init_neurons(stacked, allocation, config.mode == "coupled", signed)
    alpha = torch.zeros(sites, count, device=samples.device, requires_grad=True)
    opt_alpha = torch.optim.Adam([alpha], lr=config.lr_alpha)
    opt_spike = torch.optim.Adam(neurons.spike_parameters(), lr=config.lr_threshold)
    opt_base = torch.optim.Adam(neurons.base_parameters(), lr=config.lr_base)
    for _ in range(config.search_steps):
        opt_spike.zero_grad(set_to_none=True)
        values, _ = neurons.surrogate_values(stacked, config.sharpness)
        (values - stacked).pow(2).mean(1).sum().backward()
        opt_spike.step()
        neurons.clamp_()
        opt_base.zero_grad(set_to_none=True)
        stats = spike_statistics(stacked, neurons.frozen_table())
        quadratic_loss(neurons.weights(), stats).sum().backward()
        opt_base.step()
        neurons.clamp_()
        opt_alpha.zero_grad(set_to_none=True)
        outputs = values.detach().reshape(count, sites, -1).permute(1, 0, 2)  # [S, C, N]
        mixture = (alpha.softmax(1)[:, :, None] * outputs).sum(1)
        (mixture - magnitude).pow(2).mean(1).sum().backward()
        opt_alpha.step()
    picks = alpha.detach().argmax(1).tolist()
    return [candidates[p] for p in picks], alpha.detach()
