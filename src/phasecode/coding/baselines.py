"""The paper's codes as constructors of one CodeTable (App. D.1).

| method          | θ(t) = h(t)     | d(t)            | spikes | levels   | trained |
|-----------------|-----------------|-----------------|--------|----------|---------|
| phase (Eq. 3)   | B^-t            | B^-t            | any    | 2^T      | no      |
| las             | τ·2^-t          | τ·2^-t          | any    | 2^T      | τ only  |
| spikedattention | τ·2^-t          | τ·2^-t          | ≤ 2    | 1+T+C(T,2)| τ only |
| ttfs            | τ·(T+1-t)/T     | τ·(T+1-t)/T     | 1      | T+1      | τ only  |
| rate (IF)       | τ/T             | τ/T             | any    | T+1      | τ only  |
| mgpc            | learned         | scale·B_g(t)^-t | any    | 2^T      | Alg. 1-2|

- phase: conventional phase coding with a fixed base and no scale; it clips at 1 − B^-T.
- las: LAS's few-spike neuron (θ=h=d=τ·2^-t); greedy subtraction makes it binary truncation
  of |x| to steps of τ·2^-T. τ is the one per-site constant we calibrate (MSE-optimal).
- spikedattention: LAS with the single-spike rule relaxed to two spikes per neuron, as the
  paper does for LLaMA.
- ttfs: time-to-first-spike (TTFSFormer-style): the neuron fires once, and the earlier it fires
  the larger the value, on a linear time code; T up to 128.
- rate: integrate-and-fire with uniform levels: the spike count is floor(|x|·T/τ), capped at T.
- mgpc: multi-granularity phase coding, initialised from LAS and trained (training package).
"""

from __future__ import annotations

import torch
from torch import Tensor

from phasecode.coding.table import UNLIMITED, CodeTable, PhaseBases
from phasecode.settings import validate_timesteps


def _table(step_values: Tensor, max_spikes: int, phase: PhaseBases | None = None) -> CodeTable:
    budget = torch.full(
        (step_values.shape[0],), max_spikes, dtype=torch.long, device=step_values.device
    )
    return CodeTable(step_values.clone(), step_values.clone(), step_values.clone(), budget, phase)


def phase(sites: int, timesteps: int, base: float = 2.0) -> CodeTable:
    """Conventional phase coding, θ = h = d = B^-t (Eq. 3)."""
    validate_timesteps(timesteps)
    bases = torch.full((sites, 1), float(base))
    return las(torch.ones(sites), timesteps, bases=bases)


def las(tau: Tensor, timesteps: int, bases: Tensor | None = None) -> CodeTable:
    """LAS: θ = h = d = τ·2^-t, i.e. a phase code with one base 2 and a per-site scale τ."""
    validate_timesteps(timesteps)
    if bases is None:
        bases = torch.full((tau.shape[0], 1), 2.0, dtype=tau.dtype, device=tau.device)
    phase_bases = PhaseBases(tau, bases, ((timesteps,),) * tau.shape[0])
    return _table(phase_bases.weights(), UNLIMITED, phase_bases)


def spikedattention(tau: Tensor, timesteps: int) -> CodeTable:
    """SpikedAttention as in App. D.1: LAS with at most two spikes per neuron."""
    table = las(tau, timesteps)
    return CodeTable(
        table.threshold,
        table.reset,
        table.weight,
        torch.full_like(table.max_spikes, 2),
        table.phase,
    )


def ttfs(tau: Tensor, timesteps: int) -> CodeTable:
    """Time-to-first-spike: one spike, value τ·(T+1−t)/T for a first spike at step t."""
    validate_timesteps(timesteps)
    t = torch.arange(1, timesteps + 1, dtype=tau.dtype, device=tau.device)
    return _table(tau[:, None] * (timesteps + 1 - t) / timesteps, 1)


def rate(tau: Tensor, timesteps: int) -> CodeTable:
    """Integrate-and-fire rate coding: T+1 uniform levels k·τ/T."""
    validate_timesteps(timesteps)
    return _table(tau[:, None].expand(-1, timesteps) / timesteps, UNLIMITED)


FIXED_CODES = {"las": las, "spikedattention": spikedattention, "ttfs": ttfs, "rate": rate}
