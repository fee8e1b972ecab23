"""The spiking operators' closed forms against the paper's step rules (Eq. 51, 52-55)."""

from __future__ import annotations

import torch

from phasecode.coding.baselines import phase
from phasecode.coding.neuron import fast_site_value
from phasecode.simulation.ops import (
    accumulate_difference,
    running_sums,
    running_values,
    spike_matmul,
    spike_product,
    train_value,
)
from phasecode.simulation.trains import SpikeTrain, encode

T = 6


def _train(*shape: int, seed: int = 0) -> SpikeTrain:
    """A float64 train of random inputs, coded by a base-1.7 phase code (d(t) not powers of 2)."""
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return encode(x, phase(1, T, base=1.7).to(torch.float64))


def test_train_value_is_the_fast_path_value_bit_for_bit():
    x = torch.randn(4, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    table = phase(1, T, base=1.7).to(torch.float64)
    fast = fast_site_value(x, table, compiled=False)
    train = encode(x, table)
    assert torch.equal(train_value(train), fast)
    assert torch.equal(running_values(train)[-1], fast)


def test_running_sums_are_a_cumsum():
    increments = torch.randn(T, 3, 5, dtype=torch.float64)
    assert torch.equal(torch.stack(list(running_sums(increments))), increments.cumsum(0))


def test_spike_matmul_accumulates_eq51_step_terms():
    a, b = _train(2, 5, 7, seed=2), _train(2, 7, 3, seed=3)
    a_steps, b_steps = a.steps(), b.steps()
    a_sums, b_sums = a_steps.cumsum(0), b_steps.cumsum(0)
    total = torch.zeros(2, 5, 3, dtype=torch.float64)
    closed = list(spike_matmul(running_values(a), running_values(b)))
    for t in range(T):  # Eq. 51: S_A(t)·B_t + A_t·S_B(t) − A_t·B_t
        total = total + a_sums[t] @ b_steps[t] + a_steps[t] @ b_sums[t] - a_steps[t] @ b_steps[t]
        torch.testing.assert_close(closed[t], total, rtol=1e-12, atol=1e-12)
    assert torch.equal(closed[-1], train_value(a) @ train_value(b))  # what the fast path forms


def test_spike_product_sums_eq55_step_terms():
    a, b = _train(4, 9, seed=4), _train(4, 9, seed=5)
    a_steps, b_steps = a.steps(), b.steps()
    steps = [  # A_t⊙B_t + Σ_{i≠t} (A_t⊙B_i + A_i⊙B_t)/2
        a_steps[t] * b_steps[t]
        + sum((a_steps[t] * b_steps[i] + a_steps[i] * b_steps[t]) / 2 for i in range(T) if i != t)
        for t in range(T)
    ]
    torch.testing.assert_close(spike_product(a, b), sum(steps), rtol=1e-12, atol=1e-12)
    assert torch.equal(spike_product(a, b), train_value(a) * train_value(b))


def test_accumulate_difference_telescopes():
    increments = torch.randn(T, 3, 8, dtype=torch.float64)

    def softmax(x: torch.Tensor) -> torch.Tensor:  # float32 values, as the simulator's φ
        return torch.softmax(x, -1, dtype=torch.float32).to(x.dtype)

    received = accumulate_difference(running_sums(increments), softmax)
    assert torch.equal(received, softmax(increments.cumsum(0)[-1]))  # exact differences
    outputs = [torch.tanh(total) for total in increments.cumsum(0)]  # Eq. 52-54, step by step
    steps = [outputs[0]] + [outputs[t] - outputs[t - 1] for t in range(1, T)]
    received = accumulate_difference(running_sums(increments), torch.tanh)
    torch.testing.assert_close(received, sum(steps), rtol=0, atol=1e-15)
    torch.testing.assert_close(received, outputs[-1], rtol=0, atol=1e-15)
