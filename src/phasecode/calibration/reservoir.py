"""Uniform sampling of a fixed number of activation values from a long stream of tensors.

Every element pushed gets an independent uniform random key; the reservoir keeps the k elements
with the smallest keys, which is a uniform sample without replacement of everything seen.

Pushing a tensor much larger than k does not draw a key per element. Only elements whose key
falls below a threshold t can matter whenever at least k keys (kept + new) lie below t: then the
k smallest keys overall all lie below t. The new elements with key < t are exactly described by
a count m ~ Binomial(n, t), a uniformly random m-subset of positions, and keys iid uniform on
[0, t). So we draw those alone: O(k) work for any n, with the same distribution as keying every
element. t is the largest kept key (nothing above it can ever enter) or, if smaller, a value
with about k + 6 sqrt(k) expected hits. In the rare case that too few keys fall below that t,
the remaining elements' keys are revealed as uniform on [t, 1) (conditioning on the count we
already drew), which keeps the sample exact.
"""

from __future__ import annotations

import hashlib
import math

import torch

from phasecode.errors import PhasecodeError


class Reservoir:
    """Keeps a uniform random sample of `k` scalars out of all elements pushed for one site."""

    def __init__(self, k: int, site: str, seed: int = 0) -> None:
        if k < 1:
            raise PhasecodeError(f"site {site}: sample size must be >= 1, got {k}")
        self.k = k
        self.site = site
        self.seen = 0
        # Seed from (seed, site) so each site has its own reproducible stream, whatever the order.
        site_seed = hashlib.sha256(f"{seed}/{site}".encode()).digest()[:8]
        self._generator = torch.Generator().manual_seed(int.from_bytes(site_seed, "little"))
        self._keys = torch.empty(0, dtype=torch.float64)  # float64: no ties in long streams
        self._values = torch.empty(0)

    def push(self, values: torch.Tensor, skip_zeros: bool = False) -> None:
        """Offer every element of `values` to the sample; with `skip_zeros` only the non-zero
        ones, without gathering them first (a full compaction costs more than the sampling):
        candidates are drawn among all positions and the zeros among them dropped, which
        leaves every non-zero element an independent key as if they alone had been pushed."""
        flat = values.detach().reshape(-1)
        if flat.numel() == 0:
            return
        if not bool(torch.isfinite(torch.stack(torch.aminmax(flat))).all()):  # NaN propagates
            raise PhasecodeError(f"site {self.site}: activations contain NaN or Inf")
        eligible = int(torch.count_nonzero(flat)) if skip_zeros else flat.numel()
        if eligible == 0:
            return
        positions, keys = self._candidates(flat, eligible, skip_zeros)
        picked = flat[positions.to(flat.device)].to(device="cpu", dtype=torch.float32)
        self._merge(keys, picked)
        self.seen += eligible

    def values(self) -> torch.Tensor:
        """The kept samples, 1-D float32 (in no particular order)."""
        return self._values.clone()

    def _candidates(
        self, flat: torch.Tensor, eligible: int, skip_zeros: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions and keys of the new elements that may enter the sample (module docstring);
        `eligible` of the flat tensor's elements take part (all, or the non-zero ones)."""
        n = flat.numel()
        bound = float(self._keys.max()) if self._keys.numel() == self.k else 1.0
        t = self._threshold(eligible, bound)
        count, prob = torch.tensor([float(n), t], dtype=torch.float64)
        m = int(torch.binomial(count, prob, generator=self._generator))
        positions = self._distinct(n, m)
        keys = t * torch.rand(m, generator=self._generator, dtype=torch.float64)
        if skip_zeros:
            nonzero = (flat[positions.to(flat.device)] != 0).cpu()
            positions, keys = positions[nonzero], keys[nonzero]
        if t == bound or int((self._keys < t).sum()) + len(keys) >= self.k:
            return positions, keys
        all_keys = t + (1 - t) * torch.rand(n, generator=self._generator, dtype=torch.float64)
        all_keys[positions] = keys
        every = (flat != 0).nonzero()[:, 0].cpu() if skip_zeros else torch.arange(n)
        return every, all_keys[every]

    def _threshold(self, n: int, bound: float) -> float:
        """Key threshold for n new elements: expect about k + 6 sqrt(k) below it, never > bound."""
        return min(bound, (self.k + 6 * math.sqrt(self.k) + 16) / n)

    def _distinct(self, n: int, m: int) -> torch.Tensor:
        """A uniformly random set of m distinct positions out of n, in random order."""
        if 8 * m >= n:
            return torch.randperm(n, generator=self._generator)[:m]
        while True:  # m << n: draw with replacement and deduplicate, rarely more than once
            draws = torch.randint(n, (m + m // 4 + 16,), generator=self._generator)
            unique = torch.unique(draws)
            if unique.numel() >= m:
                return unique[torch.randperm(unique.numel(), generator=self._generator)[:m]]

    def _merge(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep the k smallest keys among the current sample and the candidates."""
        keys = torch.cat([self._keys, keys])
        values = torch.cat([self._values, values])
        if keys.numel() > self.k:
            keys, order = torch.topk(keys, self.k, largest=False, sorted=False)
            values = values[order]
        self._keys, self._values = keys, values
