"""How much each site's coding error costs the model's loss: a diagonal Fisher estimate.

A neuron replaces x by x + ε. To second order, with ε small, zero-mean and independent of
the gradient g = ∂L/∂x, the expected loss grows by ½·Σ_i E[g_i²]·E[ε_i²]: the squared gradient
weighs each element's squared error. One backward pass over the calibration windows (through
the prepared ANN, after the prefix) gives, per site, F_s = Σ g² summed over the site's elements
and averaged over tokens, so that ½·F_s·MSE_s predicts the loss a site's neuron adds per token
(MSE per element, as the neurons are scored). Attention probabilities count only where they
are non-zero: the causal mask's zeros are coded exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from phasecode.inference.nll import summed_nll
from phasecode.inference.prefix import Prefix
from phasecode.models.adapters import adapter_for
from phasecode.models.sites import site_kind


class GradientProbe:
    """A site handler that passes values on and sums the squared gradient they receive."""

    def __init__(self, sites: list[str]):
        self.totals = dict.fromkeys(sites, 0.0)

    def __call__(self, site: str, x: Tensor) -> Tensor:
        if site in self.totals and x.requires_grad:
            nonzero = (x != 0) if site_kind(site) == "probs" else None
            x.register_hook(lambda grad: self._add(site, grad, nonzero))
        return x

    def _add(self, site: str, grad: Tensor, nonzero: Tensor | None) -> None:
        squared = grad.detach().double().pow(2)
        if nonzero is not None:
            squared = squared * nonzero
        self.totals[site] += float(squared.sum())


def site_sensitivity(
    model: nn.Module,
    surgery_for,
    sites: list[str],
    windows: Tensor,
    prefix: Prefix | None,
    progress: bool = True,
) -> Tensor:
    """F_s [S] (float64, per token) over ``windows`` [n, L]; ``surgery_for(handler)`` installs
    a handler on the prepared model's sites."""
    probe = GradientProbe(sites)
    embed = adapter_for(model).module(model, adapter_for(model).embed)
    # gradients flow to the activations only: weights stay frozen, the embedding output is
    # the leaf that makes every activation downstream require a gradient
    hook = embed.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_())
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    tokens = 0
    try:
        with surgery_for(probe), torch.enable_grad():
            for window in tqdm(windows, desc="sensitivity", unit="window", disable=not progress):
                batch = window[None]
                cache = prefix.cache_for(1) if prefix is not None else None
                logits = model(input_ids=batch, cache=cache, use_cache=cache is not None).logits
                summed_nll(logits[:, :-1], batch[:, 1:]).sum().backward()
                tokens += batch.shape[1] - 1
    finally:
        hook.remove()
        for p in frozen:
            p.requires_grad_(True)
    return torch.tensor([probe.totals[s] for s in sites], dtype=torch.float64) / tokens
