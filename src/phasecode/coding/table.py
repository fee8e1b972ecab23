"""The coding table: the value object that fully describes a batch of spiking neurons.

A table holds, for S sites and T timesteps, the threshold θ(t), reset h(t), output weight d(t)
(paper Eq. 1-3, 8) and a per-site spike budget. Phase-family tables also remember how d(t) was
built (d(t) = scale · B_{g(t)}^(-t), Eq. 7), so an artifact can be read back as bases and
allocation. Tables are immutable; training produces new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from phasecode.coding.allocation import MAX_TIMESTEPS, grain_of_step, validate_allocation
from phasecode.errors import PhasecodeError

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

    def __post_init__(self) -> None:
        shape = self.threshold.shape
        if len(shape) != 2 or not 1 <= shape[1] <= MAX_TIMESTEPS:
            raise PhasecodeError(f"code table must be [sites, T<= {MAX_TIMESTEPS}], got {shape}")
        for name in ("reset", "weight"):
            if getattr(self, name).shape != shape:
                raise PhasecodeError(f"code table {name} has shape {getattr(self, name).shape}")
        if self.max_spikes.shape != shape[:1]:
            raise PhasecodeError("code table max_spikes must have one entry per site")
        for name in ("threshold", "reset", "weight"):
            if not torch.isfinite(getattr(self, name)).all():
                raise PhasecodeError(f"code table {name} holds NaN or Inf")
        if self.phase is not None:
            for alloc in self.phase.allocation:
                validate_allocation(alloc, shape[1])

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
        return CodeTable(
            self.threshold[idx], self.reset[idx], self.weight[idx], self.max_spikes[idx], phase
        )

    def scaled(self, factor: Tensor) -> CodeTable:
        """The same code for inputs multiplied by ``factor`` [S] (θ, h, d all scale with x)."""
        f = factor[:, None]
        phase = self.phase
        if phase is not None:
            phase = PhaseBases(phase.scale * factor, phase.bases, phase.allocation)
        return CodeTable(
            self.threshold * f, self.reset * f, self.weight * f, self.max_spikes, phase
        )

    def to(self, dtype: torch.dtype | None = None, device=None) -> CodeTable:
        """Move/cast the float tables (the spike budget stays integer)."""
        phase = self.phase
        if phase is not None:
            phase = PhaseBases(
                phase.scale.to(device, dtype), phase.bases.to(device, dtype), phase.allocation
            )
        return CodeTable(
            self.threshold.to(device, dtype),
            self.reset.to(device, dtype),
            self.weight.to(device, dtype),
            self.max_spikes.to(device),
            phase,
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
        }
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
        )


def concat_tables(tables: list[CodeTable]) -> CodeTable:
    """Stack tables of equal T along the site axis."""
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
    )
