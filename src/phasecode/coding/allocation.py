"""Timestep allocation across grains: how the T steps are split between the bases B_1..B_n."""

from __future__ import annotations

from itertools import combinations
from math import comb

from phasecode.errors import PhasecodeError


def validate_allocation(allocation: tuple[int, ...] | list[int], timesteps: int) -> tuple[int, ...]:
    """Check that an allocation is a list of positive step counts summing to T."""
    alloc = tuple(int(a) for a in allocation)
    if not alloc or any(a < 1 for a in alloc):
        raise PhasecodeError(f"allocation {list(alloc)} must hold positive step counts")
    if sum(alloc) != timesteps:
        raise PhasecodeError(f"allocation {list(alloc)} sums to {sum(alloc)}, not T={timesteps}")
    return alloc


def even_allocation(timesteps: int, grains: int) -> tuple[int, ...]:
    """Split T steps as evenly as possible over ``grains`` bases (earlier grains get the extra)."""
    if not 1 <= grains <= timesteps:
        raise PhasecodeError(f"grains must be in 1..T={timesteps}, got {grains}")
    q, r = divmod(timesteps, grains)
    return tuple(q + (1 if i < r else 0) for i in range(grains))


MAX_CANDIDATES = 512  # each candidate is one extra neuron per site during the search


def candidate_allocations(timesteps: int, grains: int) -> list[tuple[int, ...]]:
    """All compositions of T into ``grains`` positive parts: the search space of Alg. 2."""
    even_allocation(timesteps, grains)  # validates the pair
    count = comb(timesteps - 1, grains - 1)
    if count > MAX_CANDIDATES:
        raise PhasecodeError(
            f"T={timesteps} with {grains} grains has {count} candidate allocations; the search "
            f"handles at most {MAX_CANDIDATES} (use fewer grains)"
        )
    cuts = combinations(range(1, timesteps), grains - 1)
    return [tuple(b - a for a, b in zip((0, *c), (*c, timesteps), strict=True)) for c in cuts]


def grain_of_step(allocation: tuple[int, ...]) -> list[int]:
    """g(t): the index of the base used at each step t (0-based), e.g. (2, 3) -> [0,0,1,1,1]."""
    return [g for g, n in enumerate(allocation) for _ in range(n)]
