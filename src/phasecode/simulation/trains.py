"""Spike trains: what one site's neurons emit over T timesteps.

A neuron integrates its whole input first (the sum of the increments it receives), then fires
(``coding.neuron.spikes``, the one implementation of the dynamics). The train keeps the signed
spikes as int8 — one bit of information per neuron and step, plus the sign — and the site's
output weights d(t), so that Q_{s,t} = d(t)·s(t) is formed only where an operator consumes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from phasecode.coding.neuron import fire_steps, mask_spikes
from phasecode.coding.table import CodeTable


@dataclass(frozen=True)
class SpikeTrain:
    """Signed spikes [T, ...] (int8) of one site, with that site's d(t) [T]."""

    spikes: Tensor
    weight: Tensor

    @property
    def timesteps(self) -> int:
        return self.spikes.shape[0]

    @cached_property
    def active_steps(self) -> int:
        """The steps this site's neurons use (per-site T: a padded step has d(t) = 0)."""
        return int((self.weight != 0).sum())

    def steps(self) -> Tensor:
        """[T, ...] of d(t)·s(t): the value each step carries (Eq. 50's Q_{s,t})."""
        shape = (self.timesteps,) + (1,) * (self.spikes.dim() - 1)
        return self.spikes.to(self.weight.dtype) * self.weight.view(shape)

    def value(self) -> Tensor:
        """Σ_t d(t)·s(t): what the train is worth once summed over time."""
        return self.steps().sum(0)

    @cached_property
    def spike_count(self) -> float:
        """All spikes of the train (a signed spike counts once); counted once, read by every
        consumer's count."""
        return float((self.spikes != 0).sum())

    def narrow(self, dim: int, start: int, length: int) -> SpikeTrain:
        """A slice along data dimension ``dim`` (0 = the first dimension after time)."""
        return SpikeTrain(self.spikes.narrow(dim + 1, start, length), self.weight)

    def cat(self, other: SpikeTrain, dim: int) -> SpikeTrain:
        """Concatenate along data dimension ``dim`` (both trains from the same site)."""
        return SpikeTrain(torch.cat([self.spikes, other.spikes], dim + 1), self.weight)


def encode(x: Tensor, row: CodeTable, mask_strength: int = 0) -> SpikeTrain:
    """The spikes a site's neurons fire for integrated input ``x`` (any shape).

    The dynamics are ``coding.neuron.fire_steps`` on |x| with the sign rule of
    ``coding.neuron.spikes``, written straight into an int8 train."""
    table = row.to(x.dtype, x.device)
    train = torch.empty((table.timesteps,) + x.shape, dtype=torch.int8, device=x.device)
    for t, fired in enumerate(fire_steps(x.abs().unsqueeze(0), table)):
        train[t] = fired[0]
    train *= torch.sign(x).to(torch.int8)
    steps = int(table.steps[0])
    return SpikeTrain(mask_spikes(train, mask_strength, steps), table.weight[0])


def integrate(increments: Tensor) -> Tensor:
    """A neuron's charge: the sum of the T increments its input delivered."""
    return increments.sum(0)
