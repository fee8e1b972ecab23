"""What happens at a site: the surgery calls ``handler(site_name, x)`` and uses the result.

One surgery serves every phase of a conversion: ``Observer`` samples the ANN's activations
(calibration), ``Coder`` replaces them with the neuron's value SN(x) (the fast equivalent
path), and the spike-level simulator plugs in its own handler later.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

import torch
from torch import Tensor

from phasecode.calibration.reservoir import Reservoir
from phasecode.coding.neuron import firing_dtype, fused_arguments, fused_site_value, mask_window
from phasecode.coding.table import CodeTable
from phasecode.models.sites import site_kind


class SiteHandler(Protocol):
    def __call__(self, site: str, x: Tensor) -> Tensor: ...


class Passthrough:
    """The ANN itself: every site returns its input."""

    def __call__(self, site: str, x: Tensor) -> Tensor:
        return x


class Observer:
    """Samples each site's values into a reservoir and passes them on unchanged.

    Attention probabilities are sampled where they are non-zero: the causal mask's exact
    zeros (about half of all entries) are coded exactly by every neuron, and left in they
    would halve the weight training gives to the probabilities that matter. Each site's
    largest |x| is kept exactly (``peaks``): a sample rarely holds it.
    """

    def __init__(self, sites: list[str], samples: int, seed: int = 0):
        self.reservoirs = {name: Reservoir(samples, name, seed) for name in sites}
        self.site_peaks: dict[str, Tensor] = {}  # per site: max |x|, on the model's device
        self.down_peaks: dict[str, Tensor] = {}  # per down site: max |x| per position

    def __call__(self, site: str, x: Tensor) -> Tensor:
        reservoir = self.reservoirs.get(site)
        if reservoir is not None:
            values = x.detach()
            kind = site_kind(site)
            reservoir.push(values, skip_zeros=kind == "probs")
            peak = values.abs().amax()
            old = self.site_peaks.get(site)
            self.site_peaks[site] = peak if old is None else torch.maximum(old, peak)
            if kind == "down":  # the outlier picture after rotation and prefix
                peak = values.abs().amax(-1).reshape(-1, values.shape[-2]).amax(0).float().cpu()
                old = self.down_peaks.get(site)
                self.down_peaks[site] = peak if old is None else torch.maximum(old, peak)
        return x

    def samples(self) -> dict[str, Tensor]:
        return {name: r.values() for name, r in self.reservoirs.items()}

    def peaks(self, sites: list[str]) -> Tensor:
        """[S] float32 on the CPU: the largest |x| each of ``sites`` showed (0 if none)."""
        zero = torch.zeros(())
        return torch.stack([self.site_peaks.get(s, zero).float().cpu() for s in sites])


class Coder:
    """Replaces each coded site's input with SN(x); sites without a neuron pass through.

    ``compiled`` selects the fused kernel (``fused_site_value``), bit-identical to the
    step-by-step dynamics but one pass over the activations; ``mask_strength`` applies spike
    masking (``coding.neuron.mask_window``); ``only`` codes just those sites (the rest pass
    through), to measure what a subset of the neurons costs.
    """

    def __init__(
        self,
        table: CodeTable,
        sites: list[str],
        compiled: bool = True,
        mask_strength: int = 0,
        only: Collection[str] | None = None,
    ):
        if table.sites != len(sites):
            raise ValueError(f"table has {table.sites} rows for {len(sites)} sites")
        mask_window(table.timesteps, mask_strength)  # validate now, not at the first site
        self.rows = {
            name: table.select(i) for i, name in enumerate(sites) if only is None or name in only
        }
        self.compiled, self.mask_strength = compiled, mask_strength
        self._fused: dict[tuple[str, torch.device, torch.dtype], tuple] = {}

    def __call__(self, site: str, x: Tensor) -> Tensor:
        row = self.rows.get(site)
        if row is None:
            return x
        with torch.no_grad():
            return fused_site_value(x, self.fused(site, x), self.compiled)

    def fused(self, site: str, like: Tensor) -> tuple | None:
        """The site's neuron as a fused kernel takes it (``fused_arguments``), on ``like``'s
        device in its firing dtype, built once (None: the site passes through). The coded
        attention codes the probabilities inside its own kernel with it."""
        row = self.rows.get(site)
        if row is None:
            return None
        key = (site, like.device, firing_dtype(like.dtype))
        if key not in self._fused:
            self._fused[key] = fused_arguments(row, self.mask_strength, like)
        return self._fused[key]
