"""Compact per-site histograms of calibration activations, stored in the artifact at conversion.

Binning choice. Site activations are signed and heavy-tailed (even after rotation the largest
|x| is often 10-100× the typical one). Linear bins over [min, max] then spend almost every bin
on the sparse tails and squash the body — where the neuron's levels matter most — into a few
bins. Quantile bins resolve the body but need per-bin edges in the artifact and make the
tails unreadable. We bin uniformly in u = asinh(x / s), with s the median of the non-zero
|x| of the site: bins are linear (width ≈ s·du) inside |x| ≲ s and logarithmic beyond, so one
fixed number of bins resolves the body and still covers the extreme tail. The edges are a
closed-form function of (lo, hi, s), so three numbers per site suffice, and matplotlib's
``asinh`` axis scale (same s) draws the bins at equal width. Counts are plotted on a log axis,
as in the paper's Fig. 1, so the tails stay visible next to the body.

Stored tensors (``site_histograms``): ``histogram_counts`` [S, bins] int64 (exact; sum = the
number of finite samples), ``histogram_range`` [S, 2] float32 (lo, hi = min, max of the site),
``histogram_scale`` [S] float32 (s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

COUNTS = "histogram_counts"
RANGE = "histogram_range"
SCALE = "histogram_scale"
SITE_CHUNK = 32  # sites binned at once: bounds the float64 scratch to 32 × N values


def _robust_scale(row: Tensor) -> float:
    """Median of the non-zero |x|: the width of the linear part of the asinh axis."""
    nonzero = row.abs()[row != 0]
    if nonzero.numel() == 0:
        return 1.0
    scale = float(nonzero.median())
    return scale if scale > 0 and math.isfinite(scale) else 1.0


def _site_range(row: Tensor) -> tuple[float, float]:
    """(min, max) of the finite values, widened when the site is constant or empty."""
    if row.numel() == 0:
        return -1.0, 1.0
    lo, hi = float(row.min()), float(row.max())
    if hi <= lo:
        pad = max(abs(lo) * 1e-3, 1e-12)
        lo, hi = lo - pad, hi + pad
    return lo, hi


def site_histograms(samples: Tensor, bins: int = 256) -> dict[str, Tensor]:
    """Histograms of ``samples`` [S, N] in asinh bins (module docstring); non-finite values are
    left out. Returns the tensors to merge into the artifact."""
    if samples.dim() != 2:
        raise ValueError(f"samples must be [sites, N], got shape {tuple(samples.shape)}")
    if bins < 2:
        raise ValueError(f"need at least 2 bins, got {bins}")
    sites = samples.shape[0]
    counts = torch.zeros(sites, bins, dtype=torch.int64)
    ranges = torch.zeros(sites, 2, dtype=torch.float64)
    scales = torch.ones(sites, dtype=torch.float64)
    for i in range(sites):
        row = samples[i].detach().to(torch.float64)
        row = row[torch.isfinite(row)]
        ranges[i] = torch.tensor(_site_range(row), dtype=torch.float64)
        scales[i] = _robust_scale(row)
    for start in range(0, sites, SITE_CHUNK):
        stop = min(start + SITE_CHUNK, sites)
        x = samples[start:stop].detach().to(torch.float64)
        finite = torch.isfinite(x)
        index = bin_index(x.nan_to_num(0.0), ranges[start:stop], scales[start:stop], bins)
        flat = (index + bins * torch.arange(stop - start)[:, None])[finite]
        counts[start:stop] = torch.bincount(flat, minlength=(stop - start) * bins).view(-1, bins)
    return {COUNTS: counts, RANGE: ranges.float(), SCALE: scales.float()}


def _warp_bounds(ranges: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    """asinh(lo/s), asinh(hi/s) per site, in float64."""
    ranges, scales = ranges.to(torch.float64), scales.to(torch.float64)
    return torch.asinh(ranges[..., 0] / scales), torch.asinh(ranges[..., 1] / scales)


def bin_index(x: Tensor, ranges: Tensor, scales: Tensor, bins: int) -> Tensor:
    """Bin of each value of ``x`` [S, N] (clamped into 0..bins-1)."""
    u_lo, u_hi = _warp_bounds(ranges, scales)
    u = torch.asinh(x.to(torch.float64) / scales.to(torch.float64)[:, None])
    position = (u - u_lo[:, None]) / (u_hi - u_lo)[:, None] * bins
    return position.floor().clamp(0, bins - 1).long()


def bin_edges(ranges: Tensor, scales: Tensor, bins: int) -> Tensor:
    """Edges [..., bins + 1] (float64) for ranges [..., 2] and scales [...]; the inverse of the
    binning, for plotting."""
    u_lo, u_hi = _warp_bounds(ranges, scales)
    fraction = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    u = u_lo[..., None] + (u_hi - u_lo)[..., None] * fraction
    edges = scales.to(torch.float64)[..., None] * torch.sinh(u)
    edges[..., 0] = ranges[..., 0].to(torch.float64)  # exact ends despite sinh(asinh) rounding
    edges[..., -1] = ranges[..., 1].to(torch.float64)
    return edges


def bin_centers(ranges: Tensor, scales: Tensor, bins: int) -> Tensor:
    """Centres [..., bins] of the bins, taken in the warped coordinate (the plotted centre)."""
    u_lo, u_hi = _warp_bounds(ranges, scales)
    fraction = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    u = u_lo[..., None] + (u_hi - u_lo)[..., None] * fraction
    return scales.to(torch.float64)[..., None] * torch.sinh(u)


@dataclass(frozen=True)
class SiteHistogram:
    """One site's histogram, unpacked for plotting and summary statistics."""

    counts: Tensor  # [bins] float64
    edges: Tensor  # [bins + 1]
    centers: Tensor  # [bins]
    scale: float  # s of the asinh axis

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    @property
    def lo(self) -> float:
        return float(self.edges[0])

    @property
    def hi(self) -> float:
        return float(self.edges[-1])

    def moments(self) -> dict[str, float]:
        """Mean, std and excess kurtosis of the binned values (bin centres as the values): the
        heavy-tail measure of the Fig. 3 scatter."""
        weight = self.counts / max(self.total, 1.0)
        mean = float((weight * self.centers).sum())
        centred = self.centers - mean
        var = float((weight * centred**2).sum())
        fourth = float((weight * centred**4).sum())
        kurtosis = fourth / var**2 - 3.0 if var > 0 else 0.0
        return {"mean": mean, "std": var**0.5, "excess_kurtosis": kurtosis}

    def abs_quantile(self, q: float) -> float:
        """Approximate q-quantile of |x| (at bin-centre resolution)."""
        magnitude = self.centers.abs()
        order = magnitude.argsort()
        cumulative = self.counts[order].cumsum(0) / max(self.total, 1.0)
        index = int(torch.searchsorted(cumulative, torch.tensor(q, dtype=torch.float64)))
        return float(magnitude[order][min(index, len(order) - 1)])


def has_histograms(tensors: dict[str, Tensor]) -> bool:
    """True when the artifact carries the histogram tensors."""
    return COUNTS in tensors and RANGE in tensors


def site_histogram(tensors: dict[str, Tensor], index: int) -> SiteHistogram | None:
    """Site ``index``'s histogram from the artifact tensors, or None when there is none (an
    artifact without ``histogram_scale`` is read as linear bins: s → ∞)."""
    if not has_histograms(tensors):
        return None
    counts = tensors[COUNTS][index].to(torch.float64)
    ranges = tensors[RANGE][index].to(torch.float64)
    bins = counts.shape[0]
    if SCALE in tensors:
        scale = tensors[SCALE][index].to(torch.float64)
        edges, centers = bin_edges(ranges, scale, bins), bin_centers(ranges, scale, bins)
        scale_value = float(scale)
    else:
        edges = torch.linspace(float(ranges[0]), float(ranges[1]), bins + 1, dtype=torch.float64)
        centers = (edges[1:] + edges[:-1]) / 2
        scale_value = float("inf")
    return SiteHistogram(counts, edges, centers, scale_value)
