"""Signed-digit neurons and per-site timesteps: the table, the dynamics and the fused kernel."""

from __future__ import annotations

import pytest
import torch

from phasecode.coding.neuron import fast_site_value, mask_spikes, spikes, value
from phasecode.coding.table import CodeTable, concat_tables
from phasecode.errors import PhasecodeError
from phasecode.training.neurons import rounding_thresholds, signed_digit_thresholds


def _weights(timesteps: int, top: float = 1.0) -> torch.Tensor:
    return (top * 2.0 ** -torch.arange(1, timesteps + 1, dtype=torch.float64))[None]


def _signed(timesteps: int = 8) -> CodeTable:
    d = _weights(timesteps)
    theta = signed_digit_thresholds(d)
    return CodeTable(theta, d.clone(), d.clone(), torch.zeros(1, dtype=torch.long), None, theta)


def _binary(timesteps: int = 8) -> CodeTable:
    d = _weights(timesteps)
    return CodeTable(rounding_thresholds(d), d.clone(), d.clone(), torch.zeros(1, dtype=torch.long))


def test_seven_is_eight_minus_one():
    d = _weights(4, 8.0)  # levels 4, 2, 1, 0.5
    theta = signed_digit_thresholds(d)
    table = CodeTable(theta, d.clone(), d.clone(), torch.zeros(1, dtype=torch.long), None, theta)
    x = torch.tensor([[3.5]], dtype=torch.float64)  # 4 − 0.5
    train = spikes(x, table)[:, 0, 0].tolist()
    assert train == [1.0, 0.0, 0.0, -1.0]
    assert value(x, table).item() == 3.5


def test_same_rounding_fewer_spikes_than_binary():
    x = torch.randn(1, 20_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x / x.abs().max()
    binary, signed = _binary(), _signed()
    assert torch.equal(value(x, binary), value(x, signed))  # the same rounded value
    count = {n: (spikes(x, t) != 0).sum().item() for n, t in (("b", binary), ("s", signed))}
    assert count["s"] < 0.9 * count["b"]


@pytest.mark.parametrize("strength", [0, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_kernel_is_bit_identical_for_signed_digits(strength, dtype):
    torch.manual_seed(1)
    table = _signed(6)
    # trained-looking: perturbed thresholds and resets so every branch of the kernel runs
    noise = 1 + 0.2 * torch.rand(2, 1, 6, dtype=torch.float64)
    table = CodeTable(
        table.threshold * noise[0],
        table.reset * noise[1],
        table.weight,
        table.max_spikes,
        None,
        table.negative_threshold * noise[1],
    ).to(dtype)
    x = (torch.randn(1, 5000, dtype=dtype) * 0.7).clamp(-1.2, 1.2)
    reference = (mask_spikes(spikes(x, table), strength) * table.weight.T[:, :, None]).sum(0)
    for compiled in (False, True):
        fast = fast_site_value(x[0], table, compiled=compiled, mask_strength=strength)
        assert torch.equal(fast, reference[0])


def test_per_site_steps_never_fire_after_their_own_T():
    short = _signed(5)
    table = concat_tables([_signed(8), short])
    assert table.timesteps == 8 and table.steps.tolist() == [8, 5]
    x = torch.rand(2, 3000, dtype=torch.float64) * 2 - 1
    fired = spikes(x, table)
    assert not fired[5:, 1].any()
    assert torch.equal(value(x[1:], short), value(x, table)[1:])
    for compiled in (False, True):
        fast = fast_site_value(x[1], table.select(1), compiled=compiled)
        assert torch.equal(fast, value(x, table)[1])


def test_table_checks_and_round_trip():
    table = concat_tables([_signed(8), _signed(4)])
    again = CodeTable.from_tensors(table.to_tensors(), None)
    assert torch.equal(again.negative_threshold, table.negative_threshold)
    assert torch.equal(again.steps, table.steps)
    with pytest.raises(PhasecodeError, match="d\\(t\\) = 0"):
        CodeTable(
            table.threshold, table.reset, table.threshold, table.max_spikes, None, None, table.steps
        )
    with pytest.raises(PhasecodeError, match="negative_threshold"):
        CodeTable(
            table.threshold, table.reset, table.weight, table.max_spikes, None, -table.threshold
        )
    with pytest.raises(ValueError, match="mix"):
        concat_tables([_signed(4), _binary(4)])
    old = {k: v for k, v in _binary().to_tensors().items() if k != "steps"}  # older artifacts
    assert CodeTable.from_tensors(old, None).steps.tolist() == [8]
