"""The spiking operators between sites (paper App. B), each exact once summed over time.

Linear layers take spike trains and return per-step increments [T, ...]. Every other operator
here feeds something that only ever sums what it receives: a neuron integrates all T increments
before it fires, and an accumulate–difference unit (Eq. 52-54) reads its running input sum
I(1) + … + I(t) at each step. So these operators return exactly those sums — the running sums
for Q·Kᵀ (the softmax reads them step by step), the sum over all T for P·V, SiLU·up and every
φ (a neuron reads them) — in closed form, instead of T increments that would be summed again.
The sums are the quantities the paper's step rules deliver (the step terms telescope), so the
fast path (analog model with SN(x) at each site) equals this network; in float64 they are
formed the way the fast path forms them, so the two agree to rounding, and bit for bit where a
docstring says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from phasecode.simulation.trains import SpikeTrain


def linear_steps(steps: Tensor, linear: nn.Linear) -> Tensor:
    """W·(d(t)s(t)) per step (spike-driven accumulation), the bias delivered at the first step.

    ``steps`` is a train's ``steps()``: formed once when several linears read the same train."""
    out = F.linear(steps, linear.weight)
    if linear.bias is not None:
        out[0] += linear.bias
    return out


def running_sums(increments: Tensor) -> Iterator[Tensor]:
    """I(1) + … + I(t) for t = 1..T, added left to right (bit-identical to ``cumsum(0)``), one
    step's sum alive at a time instead of a [T, ...] tensor."""
    total = None
    for increment in increments:
        total = increment if total is None else total + increment
        yield total


def running_values(train: SpikeTrain) -> Tensor:
    """S(t) = Σ_{τ≤t} d(τ)s(τ), t = 1..T, as [T, ...]: what the train has delivered by step t.

    Added left to right, as the fast path's neuron adds its d(t) (``coding.neuron``), so S(T)
    is the fast path's SN(x) bit for bit."""
    return train.steps().cumsum(0)


def train_value(train: SpikeTrain) -> Tensor:
    """S(T) = Σ_t d(t)·s(t), added left to right like ``running_values`` (hence bit-identical
    to the fast path's SN(x)), without forming [T, ...] float values: d(t)·s(t) is exact
    (s ∈ {−1, 0, +1}), so each step is one rounding of S(t−1) + d(t)s(t) as in a cumsum."""
    spikes = train.spikes
    value = torch.zeros(spikes.shape[1:], dtype=train.weight.dtype, device=spikes.device)
    for step, weight in zip(spikes, train.weight.tolist(), strict=True):
        value.add_(step, alpha=weight)
    return value


def spike_matmul(a_sums: Iterable[Tensor], b_sums: Iterable[Tensor]) -> Iterator[Tensor]:
    """Eq. 51 accumulated: Σ_{τ≤t} A·B's step terms, for t = 1..T, from the operands' running
    values S_A(t) [..., M, K] and S_B(t) [..., K, N].

    Eq. 51 adds S_A(t)·B_t + A_t·S_B(t) − A_t·B_t at step t; that is S_A(t)·S_B(t) −
    S_A(t−1)·S_B(t−1), so the sum up to t telescopes to S_A(t)·S_B(t): one product per step
    where the step terms cost two plus two running sums over [T, ..., M, N]. A consumer that
    integrates all T steps (a neuron) needs only the last, S_A(T)·S_B(T) = A·B.

    Exactness: the identity holds in real arithmetic, not bit for bit in float64. The d(t) are
    float32 values (24-bit significands; on SmolLM2-135M at T = 8 a site's span ≤ 8 binades),
    so every d(t)s(t), every S(t) (≤ 35 bits) and every product of two d(t) (48 bits) is exact,
    but a product of two S(t) or a sum of K·T² step products is not: checked there, Σ_t of the
    step terms and S_A(T)·S_B(T) differ in ~80% of the Q·Kᵀ entries, by ≤ 1e-15 relative.
    Neither is "the" float result; this one is the fast path's (S(T) is its SN(x) bit for bit,
    the product the same matmul, up to the kernel's summation order for the shape it gets), and
    the float32 cast before the softmax absorbs what is left: there (512 tokens, layers 0-2)
    every input of the probability neurons equalled the fast path's bit for bit.
    """
    for a_t, b_t in zip(a_sums, b_sums, strict=True):
        yield a_t @ b_t


def accumulate_difference(accumulated: Iterable[Tensor], fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Eq. 52-54, integrated as the next neuron receives it: Σ_t O(t).

    The unit reads its running input I_acc(t) (``accumulated``, t = 1..T), applies φ and emits
    O(t) = φ(I_acc(t)) − φ(I_acc(t − 1)), with φ(I_acc(0)) = 0, so Σ_t O(t) = φ(I_acc(T)):
    softmax, RMSNorm and SiLU become exact over T steps without being linear. φ runs at every
    step and each O(t) is formed and added, left to right, as the neuron integrates it; only
    one step's tensors are alive at a time. When every O(t) is exact the sum telescopes to
    φ(I_acc(T)) bit for bit: softmax and the (gain-free) RMSNorm return float32 values, and
    the difference of two float32 values is exact in float64 unless their magnitudes are more
    than 2^28 apart.
    """
    received = previous = None
    for total in accumulated:
        current = fn(total)
        received = current if previous is None else received + (current - previous)
        previous = current
    return received


def difference_steps(accumulated: Iterable[Tensor], fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Eq. 52-54 step by step, [T, ...]: O(t) = φ(I_acc(t)) − φ(I_acc(t − 1)), for a consumer
    that takes increments rather than integrating them (a post-norm's output joins the
    residual stream, which the next norms read step by step). Σ_t O(t) = φ(I_acc(T)) up to
    the rounding of the differences, as in ``accumulate_difference``."""
    out, previous = [], None
    for total in accumulated:
        current = fn(total)
        out.append(current if previous is None else current - previous)
        previous = current
    return torch.stack(out)


def spike_product(a: SpikeTrain, b: SpikeTrain) -> Tensor:
    """A ⊙ B for two trains by Eq. 55, summed over the T steps (its consumer is a neuron).

    Step t adds A_t⊙B_t + Σ_{i≠t} (A_t⊙B_i + A_i⊙B_t)/2 = (A_t ⊙ B + A ⊙ B_t)/2: each spike adds
    the other train's value; summed over t that is A ⊙ B exactly (real arithmetic). Formed as
    the product of the two values, which is the fast path's product bit for bit
    (``train_value``)."""
    return train_value(a) * train_value(b)
