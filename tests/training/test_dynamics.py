"""The fused surrogate dynamics against the step-by-step dynamics under autograd: the same
values, spikes and counts bit for bit, gradients within float rounding, and the compiled
kernels equal to the eager ones."""

from __future__ import annotations

import pytest
import torch

from phasecode.coding.neuron import fire_steps
from phasecode.coding.table import UNLIMITED, CodeTable
from phasecode.training.dynamics import spike_train, surrogate_dynamics
from phasecode.training.surrogate import sigmoid_slope, slopes

F64 = torch.float64


class _SigmoidStep(torch.autograd.Function):
    """Θ(u) forward, k·σ(ku)(1 − σ(ku)) backward: the surrogate as autograd sees it."""

    @staticmethod
    def forward(ctx, u, k):
        ctx.save_for_backward(u, k)
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        u, k = ctx.saved_tensors
        sig = torch.sigmoid(k * u)
        return grad * k * sig * (1 - sig), None


def _reference(magnitude, table: CodeTable, sharpness: float):
    """SN(|x|) and the count through ``fire_steps`` under autograd, every Θ it evaluates
    counted (what training ran before the fused kernels)."""
    k = slopes(table.weight, sharpness)
    count = 0.0

    def step(u, t):
        nonlocal count
        s = _SigmoidStep.apply(u, k[:, t, None])
        count = count + s
        return s

    out = torch.zeros_like(magnitude)
    for t, s in enumerate(fire_steps(magnitude, table, step)):
        out = out + table.weight[:, t, None] * s
    return out, count


def _table(sites: int, timesteps: int, signed: bool, seed: int, dtype=F64) -> CodeTable:
    g = torch.Generator().manual_seed(seed)
    weight = 0.5 ** torch.arange(1, timesteps + 1, dtype=dtype).repeat(sites, 1)
    weight = weight * (1 + 0.2 * torch.rand(sites, timesteps, generator=g, dtype=dtype))
    threshold = weight * (0.5 + 0.5 * torch.rand(sites, timesteps, generator=g, dtype=dtype))
    reset = weight * (0.8 + 0.4 * torch.rand(sites, timesteps, generator=g, dtype=dtype))
    negative = 0.75 * weight if signed else None
    budget = torch.full((sites,), UNLIMITED, dtype=torch.long)
    return CodeTable(threshold, reset, weight, budget, None, negative)


def _leaves(table: CodeTable) -> tuple[CodeTable, list[torch.Tensor]]:
    params = [table.threshold, table.reset, table.weight]
    params += [table.negative_threshold] if table.signed else []
    params = [p.clone().requires_grad_() for p in params]
    negative = params[3] if table.signed else None
    leaf = CodeTable(params[0], params[1], params[2], table.max_spikes, None, negative)
    return leaf, params


@pytest.mark.parametrize("signed", [False, True])
def test_fused_dynamics_equal_autograd_of_the_step_by_step_dynamics(signed):
    table = _table(3, 6, signed, seed=1)
    magnitude = torch.rand(3, 400, generator=torch.Generator().manual_seed(2), dtype=F64)
    upstream = torch.randn(2, 3, 400, generator=torch.Generator().manual_seed(3), dtype=F64)
    results = []
    for run in (_reference, surrogate_dynamics):
        leaf, params = _leaves(table)
        out, count = run(magnitude, leaf, 4.0)
        ((out * upstream[0]).sum() + (count * upstream[1]).sum()).backward()
        results.append((out.detach(), count.detach(), [p.grad for p in params]))
    (out, count, grads), (fused_out, fused_count, fused_grads) = results
    assert torch.equal(out, fused_out) and torch.equal(count, fused_count)
    for grad, fused in zip(grads, fused_grads, strict=True):
        assert grad.abs().sum() > 0
        torch.testing.assert_close(fused, grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("signed", [False, True])
def test_the_spike_train_is_fire_steps(signed):
    table = _table(4, 5, signed, seed=4)
    magnitude = torch.rand(4, 300, generator=torch.Generator().manual_seed(5), dtype=F64)
    expected = torch.stack(list(fire_steps(magnitude, table)), 1)
    assert torch.equal(spike_train(magnitude, table), expected)


def test_tables_training_never_builds_are_refused():
    table = _table(2, 4, False, seed=6)
    limited = CodeTable(table.threshold, table.reset, table.weight, torch.tensor([2, 4]))
    with pytest.raises(ValueError, match="spike budget"):
        spike_train(torch.rand(2, 10, dtype=F64), limited)
    with pytest.raises(ValueError, match="samples"):
        surrogate_dynamics(torch.rand(3, 10, dtype=F64), table, 4.0)


def test_the_sigmoid_slope_is_the_smooth_steps_derivative():
    u = (torch.randn(3, 50, generator=torch.Generator().manual_seed(7), dtype=F64)).requires_grad_()
    k = slopes(torch.tensor([[0.5], [-0.25], [0.1]], dtype=F64), sharpness=4.0)
    torch.sigmoid(k * u).sum().backward()
    torch.testing.assert_close(sigmoid_slope(u.detach(), k), u.grad, rtol=1e-12, atol=1e-14)
    assert torch.equal(k[:, 0], torch.tensor([8.0, 16.0, 40.0], dtype=F64))


@pytest.mark.parametrize("signed", [False, True])
def test_compiled_kernels_equal_the_eager_ones(monkeypatch, signed):
    """float32, as training runs: forward bit for bit, gradients within float rounding (T=3:
    the kernels unroll T steps, and compiling them is most of this test's time)."""
    table = _table(5, 3, signed, seed=8, dtype=torch.float32)
    magnitude = torch.rand(5, 700, generator=torch.Generator().manual_seed(9))
    results = []
    for compile_flag in ("0", "1"):
        monkeypatch.setenv("PHASECODE_COMPILE", compile_flag)
        leaf, params = _leaves(table)
        out, count = surrogate_dynamics(magnitude, leaf, 4.0)
        (out.sum() + 0.1 * count.sum()).backward()
        results.append((out, count, [p.grad for p in params], spike_train(magnitude, table)))
    eager, compiled = results
    for a, b in zip(eager[:2], compiled[:2], strict=True):
        assert torch.equal(a.detach(), b.detach())
    assert torch.equal(eager[3], compiled[3])
    for a, b in zip(eager[2], compiled[2], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("signed", [False, True])
def test_the_magnitude_gets_a_straight_through_gradient_inside_the_range(signed):
    """Block reconstruction trains a neuron on the error of later sites: the gradient reaches
    its input as it left the output, and is zero where the neuron clips (beyond Σ d)."""
    table = _table(2, 5, signed, seed=4)
    reach = table.weight.sum(1, keepdim=True)
    magnitude = torch.rand(2, 50, generator=torch.Generator().manual_seed(1), dtype=F64) * 1.5
    magnitude = (magnitude * reach).requires_grad_()
    out, _ = surrogate_dynamics(magnitude, table, 4.0)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    inside = magnitude.detach() <= reach
    assert inside.any() and (~inside).any()
    assert torch.equal(magnitude.grad, upstream * inside)
