"""The spiking operators between sites (paper App. B), each exact once summed over time.

Every operator takes spike trains (or per-step increments) and returns per-step output
increments [T, ...]; the next neuron integrates them. Summed over t, each equals the analog
operation on the trains' values, which is why the fast path (analog model with SN(x) at each
site) equals this network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from phasecode.simulation.trains import SpikeTrain


def linear_steps(train: SpikeTrain, linear: nn.Linear) -> Tensor:
    """W·(d(t)s(t)) per step (spike-driven accumulation), the bias delivered at the first step."""
    out = F.linear(train.steps(), linear.weight)
    if linear.bias is not None:
        out[0] += linear.bias
    return out


def accumulate_difference(increments: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Eq. 52-54: accumulate the input, apply φ, emit the change of φ's output.

    O(t) = φ(I(1) + … + I(t)) − O_acc(t − 1), with O_acc(0) = 0, so Σ_t O(t) = φ(Σ_t I(t)):
    softmax, RMSNorm and SiLU become exact over T steps without being linear.
    """
    accumulated = increments.cumsum(0)
    out = torch.empty_like(increments)
    previous = None
    for t in range(increments.shape[0]):
        current = fn(accumulated[t])
        out[t] = current if previous is None else current - previous
        previous = current
    return out


def spike_matmul(a: SpikeTrain, b: SpikeTrain) -> Tensor:
    """A·B for two trains by Eq. 51: step t adds S_A(t)·B_t + A_t·S_B(t) − A_t·B_t.

    Written as S_A(t)·B_t + A_t·S_B(t − 1) (the same sum), two spike-driven products per
    step. ``a`` is [T, ..., M, K] and ``b`` [T, ..., K, N]; returns [T, ..., M, N].
    """
    a_steps, b_steps = a.steps(), b.steps()
    a_sum = a_steps.cumsum(0)
    b_before = b_steps.cumsum(0) - b_steps
    return a_sum @ b_steps + a_steps @ b_before


def spike_product(a: SpikeTrain, b: SpikeTrain) -> Tensor:
    """A ⊙ B for two trains by Eq. 55: step t adds A_t⊙B_t + Σ_{i≠t} (A_t⊙B_i + A_i⊙B_t)/2.

    With A = Σ_t A_t that is (A_t ⊙ B + A ⊙ B_t)/2: each spike adds the other train's value.
    """
    a_steps, b_steps = a.steps(), b.steps()
    return (a_steps * b_steps.sum(0) + a_steps.sum(0) * b_steps) / 2
