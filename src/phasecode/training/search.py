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
from phasecode.settings import TrainConfig
from phasecode.training.alternating import init_neurons, site_scale
from phasecode.training.neurons import quadratic_loss, spike_statistics
from phasecode.training.objective import site_error


def search_allocation(
    samples: Tensor,
    timesteps: int,
    grains: int,
    config: TrainConfig | None = None,
    signed: bool = False,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
) -> tuple[list[tuple[int, ...]], Tensor]:
    """Pick one allocation per site; returns them and the final α [S, C] (``weight``
    [S, N] and ``bias`` [S]: the objective's terms, as ``train_neurons``)."""
    config = config or TrainConfig()
    candidates = candidate_allocations(timesteps, grains)
    sites, count = samples.shape[0], len(candidates)
    if count == 1:
        return [candidates[0]] * sites, torch.zeros(sites, 1, device=samples.device)
    subset = samples[:, : config.search_samples]
    magnitude = (subset / site_scale(subset)[:, None]).abs()
    stacked = magnitude.repeat(count, 1)  # candidate-major: rows c*S .. c*S+S-1
    subset_weight = None if weight is None else weight[:, : config.search_samples]
    stacked_weight = None if weight is None else subset_weight.repeat(count, 1)
    stacked_bias = None if bias is None else bias.repeat(count)
    allocation = [c for c in candidates for _ in range(sites)]
    neurons = init_neurons(stacked, allocation, config.mode == "coupled", signed, stacked_weight)
    alpha = torch.zeros(sites, count, device=samples.device, requires_grad=True)
    opt_alpha = torch.optim.Adam([alpha], lr=config.lr_alpha)
    opt_spike = torch.optim.Adam(neurons.spike_parameters(), lr=config.lr_threshold)
    opt_base = torch.optim.Adam(neurons.base_parameters(), lr=config.lr_base)
    for _ in range(config.search_steps):
        opt_spike.zero_grad(set_to_none=True)
        values, _ = neurons.surrogate_values(stacked, config.sharpness)
        site_error(values, stacked, stacked_weight, stacked_bias).sum().backward()
        opt_spike.step()
        neurons.clamp_()
        opt_base.zero_grad(set_to_none=True)
        stats = spike_statistics(stacked, neurons.frozen_table(), stacked_weight, stacked_bias)
        quadratic_loss(neurons.weights(), stats).sum().backward()
        opt_base.step()
        neurons.clamp_()
        opt_alpha.zero_grad(set_to_none=True)
        outputs = values.detach().reshape(count, sites, -1).permute(1, 0, 2)  # [S, C, N]
        mixture = (alpha.softmax(1)[:, :, None] * outputs).sum(1)
        site_error(mixture, magnitude, subset_weight, bias).sum().backward()
        opt_alpha.step()
    picks = alpha.detach().argmax(1).tolist()
    return [candidates[p] for p in picks], alpha.detach()
