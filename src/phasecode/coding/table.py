"""The coding table: the value object that fully describes a batch of spiking neurons.

A table holds, for S sites and T timesteps, the threshold θ(t), reset h(t), output weight d(t)
(paper Eq. 1-3, 8) and a per-site spike budget. Phase-family tables also remember how d(t) was
built (d(t) = scale · B_{g(t)}^(-t), Eq. 7), so an artifact can be read back as bases and
allocation. Tables are immutable; training produces new ones.

Two extensions keep one value object for every neuron:
- a *signed-digit* table also holds θ⁻(t): the neuron may fire −1 when its residual has
  overshot below −θ⁻(t) (``coding.neuron``), writing values in a signed-digit form;
- per-site timesteps: ``steps[s] ≤ T`` is how many steps site s uses. A table of several T
  is stored padded to the largest; a padded step never fires and has d(t) = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from phasecode.coding.allocation import grain_of_step, validate_allocation
from phasecode.errors import PhasecodeError
from phasecode.settings import MAX_TIMESTEPS

UNLIMITED = 0  # max_spikes value meaning "no spike budget"


@dataclass(frozen=True)
class PhaseBases:
    """How a phase-family d(t) is built: one scale per site, bases B_i and their step allocation."""

    scale: Tensor  # [S]
    bases: Tensor  # [S, G_max]; unused trailing entries (fewer grains) are ignored
    allocation: tuple[tuple[int, ...], ...]  # per site

    def weights(self) -> Tensor:
        """d(t) = scale · B_{g(t)}^(-t), t = 1..T, as an [S, T] tensor."""
        return phase_weights(self.scale, self.bases, self.allocation)


def grain_index(allocation: tuple[tuple[int, ...], ...], device=None) -> Tensor:
    """[S, T] long tensor of g(t) for each site's allocation."""
    return torch.tensor([grain_of_step(a) for a in allocation], dtype=torch.long, device=device)


def phase_weights(scale: Tensor, bases: Tensor, allocation: tuple[tuple[int, ...], ...]) -> Tensor:
    """Differentiable d(t) = scale · B_{g(t)}^(-t) for a batch of sites."""
    timesteps = sum(allocation[0])
    steps = torch.arange(1, timesteps + 1, dtype=bases.dtype, device=bases.device)
    per_step_base = bases.gather(1, grain_index(allocation, bases.device))
    return scale[:, None] * per_step_base.pow(-steps)


@dataclass(frozen=True)
class CodeTable:
    """θ, h, d for S sites × T steps, plus a spike budget (0 = unlimited) per site."""

    threshold: Tensor  # θ(t), [S, T]
    reset: Tensor  # h(t), [S, T]
    weight: Tensor  # d(t), [S, T]
    max_spikes: Tensor  # [S] long
    phase: PhaseBases | None = field(default=None)
    negative_threshold: Tensor | None = None  # θ⁻(t) [S, T] of signed-digit neurons
    steps: Tensor | None = None  # [S] long, steps each site uses; None on input means all T

    def __post_init__(self) -> None:
        shape = self.threshold.shape
        if len(shape) != 2 or not 1 <= shape[1] <= MAX_TIMESTEPS:
            raise PhasecodeError(f"code table must be [sites, T<= {MAX_TIMESTEPS}], got {shape}")
        floats = ["threshold", "reset", "weight"]
        if self.negative_threshold is not None:
            floats.append("negative_threshold")
        for name in floats[1:]:
            if getattr(self, name).shape != shape:
                raise PhasecodeError(f"code table {name} has shape {getattr(self, name).shape}")
        if self.max_spikes.shape != shape[:1]:
            raise PhasecodeError("code table max_spikes must have one entry per site")
        for name in floats:
            if not torch.isfinite(getattr(self, name)).all():
                raise PhasecodeError(f"code table {name} holds NaN or Inf")
        if self.negative_threshold is not None and not (self.negative_threshold > 0).all():
            raise PhasecodeError("code table negative_threshold must be > 0 (0 would fire on 0)")
        self._check_steps(shape)
        if self.phase is not None:
            for alloc, steps in zip(self.phase.allocation, self.steps.tolist(), strict=True):
                validate_allocation(alloc, steps)

    def _check_steps(self, shape: torch.Size) -> None:
        if self.steps is None:
            full = torch.full(shape[:1], shape[1], dtype=torch.long, device=self.weight.device)
            object.__setattr__(self, "steps", full)
            return
        if self.steps.shape != shape[:1]:
            raise PhasecodeError("code table steps must have one entry per site")
        if not ((self.steps >= 1) & (self.steps <= shape[1])).all():
            raise PhasecodeError(f"code table steps must be in 1..T={shape[1]}")
        padded = self.step_mask().logical_not()
        if (self.weight[padded] != 0).any():
            raise PhasecodeError("code table steps beyond a site's T must have d(t) = 0")

    def step_mask(self) -> Tensor:
        """[S, T] bool: which steps each site uses."""
        t = torch.arange(self.timesteps, device=self.steps.device)
        return t[None, :] < self.steps[:, None]

    @property
    def signed(self) -> bool:
        """Signed-digit neurons (may fire −1 to correct an overshoot)."""
        return self.negative_threshold is not None

    @property
    def uniform_steps(self) -> bool:
        return bool((self.steps == self.timesteps).all())

    @property
    def sites(self) -> int:
        return self.threshold.shape[0]

    @property
    def timesteps(self) -> int:
        return self.threshold.shape[1]

    def select(self, index: int | slice | Tensor) -> CodeTable:
        """The sub-table of some sites (an int keeps a site axis of length 1)."""
        idx = [index] if isinstance(index, int) else index
        phase = None
        if self.phase is not None:
            alloc = self.phase.allocation
            picked = [alloc[i] for i in torch.arange(len(alloc))[idx].tolist()]
            phase = PhaseBases(self.phase.scale[idx], self.phase.bases[idx], tuple(picked))
        negative = None if self.negative_threshold is None else self.negative_threshold[idx]
        return CodeTable(
            self.threshold[idx],
            self.reset[idx],
            self.weight[idx],
            self.max_spikes[idx],
            phase,
            negative,
            self.steps[idx],
        )

    def scaled(self, factor: Tensor) -> CodeTable:
        """The same code for inputs multiplied by ``factor`` [S] (θ, h, d all scale with x)."""
        f = factor[:, None]
        phase = self.phase
        if phase is not None:
            phase = PhaseBases(phase.scale * factor, phase.bases, phase.allocation)
        negative = None if self.negative_threshold is None else self.negative_threshold * f
        return CodeTable(
            self.threshold * f,
            self.reset * f,
            self.weight * f,
            self.max_spikes,
            phase,
            negative,
            self.steps,
        )

    def padded(self, timesteps: int) -> CodeTable:
        """The same neurons in a table of ``timesteps`` columns (extra steps never fire)."""
        extra = timesteps - self.timesteps
        if extra < 0:
            raise ValueError(f"cannot pad a T={self.timesteps} table to {timesteps}")
        return self._columns(
            lambda column, fill: torch.nn.functional.pad(column, (0, extra), value=fill)
        )

    def _columns(self, edit: Callable[[Tensor, float], Tensor]) -> CodeTable:
        """``edit(column, fill)`` applied to every [S, T] tensor; ``fill`` is what a padded
        (never firing) step holds: thresholds 1, reset and weight 0."""
        negative = self.negative_threshold
        return CodeTable(
            edit(self.threshold, 1.0),
            edit(self.reset, 0.0),
            edit(self.weight, 0.0),
            self.max_spikes,
            self.phase,
            None if negative is None else edit(negative, 1.0),
            self.steps,
        )

    def to(self, dtype: torch.dtype | None = None, device=None) -> CodeTable:
        """Move/cast the float tables (the spike budget stays integer)."""
        phase = self.phase
        if phase is not None:
            phase = PhaseBases(
                phase.scale.to(device, dtype), phase.bases.to(device, dtype), phase.allocation
            )
        negative = self.negative_threshold
        return CodeTable(
            self.threshold.to(device, dtype),
            self.reset.to(device, dtype),
            self.weight.to(device, dtype),
            self.max_spikes.to(device),
            phase,
            None if negative is None else negative.to(device, dtype),
            self.steps.to(device),
        )

    def max_value(self) -> Tensor:
        """Largest magnitude each site can emit when every step fires (ignoring the budget)."""
        return self.weight.clamp_min(0).sum(1)

    def to_tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """Flat named tensors for safetensors; allocations go to JSON via ``allocations``."""
        out = {
            f"{prefix}threshold": self.threshold,
            f"{prefix}reset": self.reset,
            f"{prefix}weight": self.weight,
            f"{prefix}max_spikes": self.max_spikes,
            f"{prefix}steps": self.steps,
        }
        if self.negative_threshold is not None:
            out[f"{prefix}negative_threshold"] = self.negative_threshold
        if self.phase is not None:
            out[f"{prefix}scale"] = self.phase.scale
            out[f"{prefix}bases"] = self.phase.bases
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    @property
    def allocations(self) -> list[list[int]] | None:
        return None if self.phase is None else [list(a) for a in self.phase.allocation]

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, Tensor], allocations: list[list[int]] | None, prefix: str = ""
    ) -> CodeTable:
        """Inverse of ``to_tensors``."""
        phase = None
        if allocations is not None:
            phase = PhaseBases(
                tensors[f"{prefix}scale"],
                tensors[f"{prefix}bases"],
                tuple(tuple(a) for a in allocations),
            )
        return cls(
            tensors[f"{prefix}threshold"],
            tensors[f"{prefix}reset"],
            tensors[f"{prefix}weight"],
            tensors[f"{prefix}max_spikes"],
            phase,
            tensors.get(f"{prefix}negative_threshold"),
            tensors.get(f"{prefix}steps"),  # absent in artifacts before per-site T
        )


def concat_tables(tables: list[CodeTable]) -> CodeTable:
    """Stack tables along the site axis, padding them to the largest T (per-site steps)."""
    if len({t.signed for t in tables}) > 1:
        raise ValueError("cannot mix signed-digit and one-signed neurons in one table")
    timesteps = max(t.timesteps for t in tables)
    tables = [t.padded(timesteps) for t in tables]
    phases = [t.phase for t in tables]
    phase = None
    if all(p is not None for p in phases):
        width = max(p.bases.shape[1] for p in phases)
        bases = torch.cat(
            [
                torch.nn.functional.pad(p.bases, (0, width - p.bases.shape[1]), value=2.0)
                for p in phases
            ]
        )
        phase = PhaseBases(
            torch.cat([p.scale for p in phases]),
            bases,
            tuple(a for p in phases for a in p.allocation),
        )
    return CodeTable(
        torch.cat([t.threshold for t in tables]),
        torch.cat([t.reset for t in tables]),
        torch.cat([t.weight for t in tables]),
        torch.cat([t.max_spikes for t in tables]),
        phase,
        None if not tables[0].signed else torch.cat([t.negative_threshold for t in tables]),
        torch.cat([t.steps for t in tables]),
    )
