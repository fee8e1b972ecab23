"""How much each site's coding error costs the model's loss: a diagonal Fisher estimate.

A neuron replaces x by x + ε. To second order, with ε small, zero-mean and independent of
the gradient g = ∂L/∂x, the expected loss grows by ½·Σ_i E[g_i²]·E[ε_i²]: the squared gradient
weighs each element's squared error. One backward pass over the calibration windows (through
the prepared ANN, after the prefix) gives, per site, F_s = Σ g² summed over the site's elements
and averaged over tokens, so that ½·F_s·MSE_s predicts the loss a site's neuron adds per token
(MSE per element, as the neurons are scored). Attention probabilities count only where they
are non-zero: the causal mask's zeros are coded exactly.

A neuron's error is a function of x alone, so the loss it adds is exactly weighted by
E[g² | x] (no independence needed): the same pass also bins g² by |x| per site
(``Sensitivity.curve``, bins of equal sample mass), and the Fisher-weighted training
objective minimises E[w(x)·(SN(x) − x)²] with w(x) = E[g² | x] / E[g²]. For SiLU's output,
whose gradient is the up projection times the product's gradient, this is the issue's
E[(SN(a) − a)²·b²] and more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from phasecode.inference.nll import summed_nll
from phasecode.inference.prefix import Prefix, run_after
from phasecode.models.adapters import adapter_for
from phasecode.models.sites import site_kind

SENSITIVITY_WINDOWS = 4  # calibration windows the backward pass runs over (the pass costs ~3×)
SENSITIVITY_BINS = 16  # |x| bins per site for E[g² | x] (equal numbers of calibration samples)


@dataclass(frozen=True)
class Sensitivity:
    """Per site: F_s = Σ E[g²] per token, and E[g² | |x|] by bins of |x|."""

    fisher: Tensor  # [S] float64
    edges: Tensor  # [S, B-1] inner bin edges over |x|
    curve: Tensor  # [S, B] mean g² of the elements in each bin (empty bins: nearest bin's)

    def weights(self, samples: Tensor) -> Tensor:
        """[S, N] w(x) = E[g² | x] of each sample, normalised to mean 1 per site (so a
        weighted MSE is on the plain MSE's scale and ½·F_s·weighted MSE predicts the loss)."""
        edges = self.edges.to(samples)
        curve = self.curve.to(samples)
        bins = torch.stack(
            [torch.bucketize(row.abs(), edge) for row, edge in zip(samples, edges, strict=True)]
        )
        weight = curve.gather(1, bins)
        return weight / weight.mean(1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)


def bin_edges(samples: Tensor, bins: int = SENSITIVITY_BINS) -> Tensor:
    """[S, bins-1] quantiles of |x| per site: bins that each hold as many samples."""
    levels = torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=samples.device)[1:-1]
    return torch.quantile(samples.abs().double(), levels, dim=1).T.contiguous()


class GradientProbe:
    """A site handler that passes values on and bins the squared gradient they receive by
    the value's magnitude (``edges`` [S, B-1], from ``bin_edges``)."""

    def __init__(self, sites: list[str], edges: Tensor):
        self.index = {site: i for i, site in enumerate(sites)}
        self.edges = edges.cpu()
        bins = edges.shape[1] + 1
        self.sums = torch.zeros(len(sites), bins, dtype=torch.float64)
        self.counts = torch.zeros(len(sites), bins, dtype=torch.float64)

    def __call__(self, site: str, x: Tensor) -> Tensor:
        if site in self.index and x.requires_grad:
            magnitude = x.detach().abs()
            keep = (x != 0) if site_kind(site) == "probs" else None
            x.register_hook(lambda grad: self._add(site, grad, magnitude, keep))
        return x

    def _add(self, site: str, grad: Tensor, magnitude: Tensor, keep: Tensor | None) -> None:
        squared = grad.detach().double().flatten().pow(2)
        magnitude = magnitude.double().flatten()
        if keep is not None:
            squared, magnitude = squared[keep.flatten()], magnitude[keep.flatten()]
        i = self.index[site]
        bins = torch.bucketize(magnitude, self.edges[i].to(magnitude))
        bins_n = self.counts.shape[1]
        self.sums[i] += torch.bincount(bins, weights=squared, minlength=bins_n).cpu()
        self.counts[i] += torch.bincount(bins, minlength=bins_n).double().cpu()

    def result(self, tokens: int) -> Sensitivity:
        """F_s per token, and the per-bin mean g² (empty bins take the nearest filled one)."""
        fisher = self.sums.sum(1) / max(tokens, 1)
        curve = self.sums / self.counts.clamp_min(1)
        filled = self.counts > 0
        position = torch.arange(curve.shape[1], dtype=torch.float64)
        for i in range(curve.shape[0]):
            if filled[i].any() and not filled[i].all():
                nearest = (position[:, None] - position[filled[i]][None]).abs().argmin(1)
                curve[i] = curve[i][filled[i]][nearest]
            elif not filled[i].any():
                curve[i] = 1.0
        return Sensitivity(fisher, self.edges, curve)


def site_sensitivity(
    model: nn.Module,
    surgery_for,
    sites: list[str],
    windows: Tensor,
    prefix: Prefix | None,
    samples: Tensor,
    progress: bool = True,
) -> Sensitivity:
    """``Sensitivity`` over ``windows`` [n, L], binned by quantiles of the site ``samples``
    [S, N]; ``surgery_for(handler)`` installs a handler on the prepared model's sites."""
    probe = GradientProbe(sites, bin_edges(samples))
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
                logits = run_after(model, prefix, batch).logits
                summed_nll(logits[:, :-1], batch[:, 1:]).sum().backward()
                tokens += batch.shape[1] - 1
    finally:
        hook.remove()
        for p in frozen:
            p.requires_grad_(True)
    return probe.result(tokens)
