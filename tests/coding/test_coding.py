"""Coding layer: allocations, code tables, neuron dynamics and the baseline codes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from phasecode.coding import baselines
from phasecode.coding.allocation import (
    MAX_CANDIDATES,
    candidate_allocations,
    even_allocation,
    grain_of_step,
    validate_allocation,
)
from phasecode.coding.neuron import decode, fast_site_value, mask_spikes, spikes, value
from phasecode.coding.table import (
    UNLIMITED,
    CodeTable,
    PhaseBases,
    concat_tables,
    phase_weights,
)
from phasecode.errors import PhasecodeError
from phasecode.settings import MAX_TIMESTEPS, validate_timesteps

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_table(sites: int, timesteps: int, seed: int, budget: int = UNLIMITED) -> CodeTable:
    """Arbitrary positive θ, h, d (not a phase code): the neuron must work for any table."""
    g = _gen(seed)
    threshold = torch.rand(sites, timesteps, generator=g, dtype=F64) * 0.9 + 0.05
    reset = torch.rand(sites, timesteps, generator=g, dtype=F64) * 0.9 + 0.05
    weight = torch.rand(sites, timesteps, generator=g, dtype=F64) * 0.9 + 0.05
    return CodeTable(threshold, reset, weight, torch.full((sites,), budget, dtype=torch.long))


def _phase_table(seed: int = 0) -> CodeTable:
    """Three sites with different allocations / numbers of grains (T = 5)."""
    g = _gen(seed)
    allocation = ((2, 3), (5,), (1, 1, 3))
    scale = torch.rand(3, generator=g, dtype=F64) + 0.5
    bases = torch.rand(3, 3, generator=g, dtype=F64) * 2 + 1.2
    weight = phase_weights(scale, bases, allocation)
    threshold = weight * 0.9
    reset = weight * 1.1
    budget = torch.tensor([UNLIMITED, 2, 3])
    return CodeTable(threshold, reset, weight, budget, PhaseBases(scale, bases, allocation))


def _assert_tables_equal(a: CodeTable, b: CodeTable) -> None:
    for name in ("threshold", "reset", "weight", "max_spikes"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.phase is None) == (b.phase is None)
    if a.phase is not None:
        assert torch.equal(a.phase.scale, b.phase.scale)
        assert torch.equal(a.phase.bases, b.phase.bases)
        assert a.phase.allocation == b.phase.allocation


# ---------------------------------------------------------------- allocation


@pytest.mark.parametrize("bad", [0, -1, 33, True, False, 4.0, "4", None, 2.5])
def test_validate_timesteps_rejects(bad):
    with pytest.raises(PhasecodeError):
        validate_timesteps(bad, limit=32)


def test_validate_timesteps_accepts_bounds():
    assert validate_timesteps(1, limit=32) == 1
    assert validate_timesteps(32, limit=32) == 32
    assert validate_timesteps(MAX_TIMESTEPS) == MAX_TIMESTEPS
    with pytest.raises(PhasecodeError):
        validate_timesteps(MAX_TIMESTEPS + 1)


def test_validate_allocation():
    assert validate_allocation([2, 3], 5) == (2, 3)
    assert validate_allocation((5,), 5) == (5,)
    for bad, t in [((2, 2), 5), ((2, 4), 5), ((5, 0), 5), ((6, -1), 5), ((), 0), ((), 5)]:
        with pytest.raises(PhasecodeError):
            validate_allocation(bad, t)


def test_even_allocation():
    assert even_allocation(8, 3) == (3, 3, 2)
    assert even_allocation(6, 3) == (2, 2, 2)
    assert even_allocation(5, 1) == (5,)
    assert even_allocation(4, 4) == (1, 1, 1, 1)
    for t in range(1, 12):
        for n in range(1, t + 1):
            alloc = even_allocation(t, n)
            assert sum(alloc) == t and len(alloc) == n
            assert max(alloc) - min(alloc) <= 1
            assert list(alloc) == sorted(alloc, reverse=True)  # earlier grains get the extra
    for t, n in [(3, 4), (3, 0), (5, -1)]:
        with pytest.raises(PhasecodeError):
            even_allocation(t, n)


@pytest.mark.parametrize("timesteps,grains", [(1, 1), (4, 1), (4, 2), (6, 3), (8, 4), (7, 7)])
def test_candidate_allocations(timesteps, grains):
    cands = candidate_allocations(timesteps, grains)
    assert len(cands) == math.comb(timesteps - 1, grains - 1)
    assert len(set(cands)) == len(cands)
    for c in cands:
        assert len(c) == grains and sum(c) == timesteps and min(c) >= 1
    # Exactly the set of all compositions of T into `grains` positive parts.
    brute = {
        c for c in itertools.product(range(1, timesteps + 1), repeat=grains) if sum(c) == timesteps
    }
    assert set(cands) == brute


def test_candidate_allocations_small_case_order():
    assert candidate_allocations(4, 2) == [(1, 3), (2, 2), (3, 1)]


def test_candidate_allocations_are_capped():
    assert len(candidate_allocations(12, 6)) == math.comb(11, 5) <= MAX_CANDIDATES
    assert math.comb(12, 5) > MAX_CANDIDATES
    with pytest.raises(PhasecodeError, match="candidate"):
        candidate_allocations(13, 6)
    with pytest.raises(PhasecodeError):
        candidate_allocations(32, 16)


@pytest.mark.parametrize("timesteps,grains", [(3, 4), (2, 5), (4, 0)])
def test_candidate_allocations_rejects_bad_grains(timesteps, grains):
    with pytest.raises(PhasecodeError):
        candidate_allocations(timesteps, grains)


def test_grain_of_step():
    assert grain_of_step((2, 3)) == [0, 0, 1, 1, 1]
    assert grain_of_step((1, 1, 2)) == [0, 1, 2, 2]
    assert grain_of_step((4,)) == [0, 0, 0, 0]


# ---------------------------------------------------------------- code table


def test_code_table_validation_errors():
    ok = torch.ones(2, 3)
    budget = torch.zeros(2, dtype=torch.long)
    CodeTable(ok, ok, ok, budget)  # the valid reference
    with pytest.raises(PhasecodeError):
        CodeTable(torch.ones(3), torch.ones(3), torch.ones(3), budget)  # no site axis
    with pytest.raises(PhasecodeError):
        CodeTable(ok, torch.ones(2, 4), ok, budget)  # reset shape
    with pytest.raises(PhasecodeError):
        CodeTable(ok, ok, torch.ones(3, 3), budget)  # weight shape
    with pytest.raises(PhasecodeError):
        CodeTable(ok, ok, ok, torch.zeros(3, dtype=torch.long))  # budget per site
    big = torch.ones(1, MAX_TIMESTEPS + 1)
    with pytest.raises(PhasecodeError):
        CodeTable(big, big, big, torch.zeros(1, dtype=torch.long))
    for name in ("threshold", "reset", "weight"):
        for poison in (float("nan"), float("inf")):
            parts = {"threshold": ok.clone(), "reset": ok.clone(), "weight": ok.clone()}
            parts[name][1, 2] = poison
            with pytest.raises(PhasecodeError, match=name):
                CodeTable(parts["threshold"], parts["reset"], parts["weight"], budget)
    phase = PhaseBases(torch.ones(2), torch.full((2, 1), 2.0), ((3,), (2,)))
    with pytest.raises(PhasecodeError):
        CodeTable(ok, ok, ok, budget, phase)  # an allocation not summing to T


def test_phase_weights_formula():
    table = _phase_table()
    p = table.phase
    for s, alloc in enumerate(p.allocation):
        g = grain_of_step(alloc)
        expect = [p.scale[s].item() * p.bases[s, g[t]].item() ** -(t + 1) for t in range(5)]
        torch.testing.assert_close(table.weight[s], torch.tensor(expect, dtype=F64))
    torch.testing.assert_close(p.weights(), table.weight)


@pytest.mark.parametrize("with_phase", [True, False])
def test_select_concat_round_trip(with_phase):
    table = _phase_table()
    if not with_phase:
        table = CodeTable(table.threshold, table.reset, table.weight, table.max_spikes)
    parts = [table.select(i) for i in range(table.sites)]
    for i, part in enumerate(parts):
        assert part.sites == 1 and part.timesteps == 5
        assert torch.equal(part.threshold[0], table.threshold[i])
        if with_phase:
            assert part.phase.allocation == (table.phase.allocation[i],)
            assert torch.equal(part.phase.bases[0], table.phase.bases[i])
    _assert_tables_equal(concat_tables(parts), table)
    _assert_tables_equal(concat_tables([table.select(slice(0, 2)), table.select(2)]), table)
    picked = table.select(torch.tensor([2, 0]))
    assert torch.equal(picked.weight, table.weight[[2, 0]])
    if with_phase:
        assert picked.phase.allocation == (table.phase.allocation[2], table.phase.allocation[0])
        assert table.select(-1).phase.allocation == (table.phase.allocation[-1],)


def test_concat_pads_bases_of_fewer_grains():
    a = baselines.las(torch.tensor([1.0, 2.0], dtype=F64), 4)  # one grain
    b = _phase_table().select(slice(0, 1))  # allocation (2, 3): but T = 5, so rebuild at T=4
    b = CodeTable(
        b.threshold[:, :4],
        b.reset[:, :4],
        b.weight[:, :4],
        b.max_spikes,
        PhaseBases(b.phase.scale, b.phase.bases, ((2, 2),)),
    )
    both = concat_tables([a, b])
    assert both.phase.bases.shape == (3, 3)
    assert both.phase.allocation == ((4,), (4,), (2, 2))
    torch.testing.assert_close(both.phase.weights()[:2], a.weight)
    torch.testing.assert_close(both.phase.weights()[2:], b.weight)


@pytest.mark.parametrize("with_phase", [True, False])
def test_to_tensors_from_tensors_round_trip(with_phase):
    table = _phase_table()
    if not with_phase:
        table = CodeTable(table.threshold, table.reset, table.weight, table.max_spikes)
    tensors = table.to_tensors(prefix="layers.0.")
    assert all(k.startswith("layers.0.") for k in tensors)
    assert ("layers.0.bases" in tensors) == with_phase
    back = CodeTable.from_tensors(tensors, table.allocations, prefix="layers.0.")
    _assert_tables_equal(back, table)
    if with_phase:
        assert table.allocations == [[2, 3], [5], [1, 1, 3]]
    else:
        assert table.allocations is None


def test_scaled_codes_scaled_inputs():
    table = _phase_table()
    factor = torch.tensor([0.5, 3.0, 0.125], dtype=F64)
    scaled = table.scaled(factor)
    torch.testing.assert_close(scaled.phase.weights(), scaled.weight)
    x = torch.randn(3, 200, generator=_gen(1), dtype=F64)
    torch.testing.assert_close(
        value(x * factor[:, None], scaled), value(x, table) * factor[:, None]
    )


# ---------------------------------------------------------------- neuron properties


def _subset_sums(weight: torch.Tensor) -> torch.Tensor:
    t = weight.shape[0]
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=t)), dtype=weight.dtype)
    return masks @ weight  # [2^T]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_is_a_signed_subset_sum(seed):
    table = _random_table(4, 5, seed)
    x = torch.randn(4, 500, generator=_gen(seed + 10), dtype=F64) * 2
    out = value(x, table)
    for s in range(4):
        sums = _subset_sums(table.weight[s])
        dist = (out[s].abs()[:, None] - sums[None]).abs().amin(1)
        assert dist.max() < 1e-12
        nonzero = out[s] != 0
        assert torch.equal(torch.sign(out[s][nonzero]), torch.sign(x[s][nonzero]))


def _las_closed_form(x: torch.Tensor, tau: torch.Tensor, timesteps: int) -> torch.Tensor:
    step = tau[:, None] * 2.0**-timesteps
    k = torch.floor(x.abs() / step).clamp(max=2**timesteps - 1)
    return torch.sign(x) * k * step


@pytest.mark.parametrize("timesteps", [1, 3, 6, 10])
def test_las_is_binary_truncation(timesteps):
    g = _gen(timesteps)
    tau = torch.rand(3, generator=g, dtype=F64) * 4 + 0.1
    x = (torch.rand(3, 2000, generator=g, dtype=F64) * 2.6 - 1.3) * tau[:, None]
    table = baselines.las(tau, timesteps)
    assert table.max_spikes.eq(UNLIMITED).all()
    torch.testing.assert_close(
        value(x, table), _las_closed_form(x, tau, timesteps), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("timesteps", [1, 4, 7])
def test_las_on_exact_grid_points(timesteps):
    # Dyadic scales keep every grid point and every subtraction exact in float64.
    tau = torch.tensor([1.0, 0.75, 6.0], dtype=F64)
    k = torch.arange(0, 2**timesteps + 3, dtype=F64)  # beyond the top level too
    x = k[None] * tau[:, None] * 2.0**-timesteps
    x = torch.cat([x, -x], 1)
    out = value(x, baselines.las(tau, timesteps))
    assert torch.equal(out, _las_closed_form(x, tau, timesteps))
    # Grid points below the top are reproduced exactly.
    inside = k < 2**timesteps
    assert torch.equal(out[:, : len(k)][:, inside], x[:, : len(k)][:, inside])


@pytest.mark.parametrize("timesteps", [1, 3, 8])
def test_conventional_phase_closed_form(timesteps):
    x = torch.cat(
        [
            torch.rand(2, 3000, generator=_gen(timesteps)) * 1.5 - 0.75,
            (torch.arange(2**timesteps + 2) / 2**timesteps).expand(2, -1),
        ],
        1,
    )
    table = baselines.phase(2, timesteps)
    expect = torch.sign(x) * (torch.floor(x.abs() * 2**timesteps) / 2**timesteps).clamp(
        max=1 - 2.0**-timesteps
    )
    assert torch.equal(value(x, table), expect)


def test_conventional_phase_other_base():
    table = baselines.phase(1, 3, base=3.0)
    torch.testing.assert_close(table.weight[0], torch.tensor([1 / 3, 1 / 9, 1 / 27]))
    # Greedy base-3 neuron with h = d: at most one spike per step, so 0.9 -> 1/3+1/9+1/27.
    out = value(torch.tensor([[0.9, 0.5, 0.1]]), table)
    torch.testing.assert_close(out, torch.tensor([[13 / 27, 13 / 27, 1 / 27]]))


@pytest.mark.parametrize("make", ["random", "phase", "budget"])
def test_batching_over_sites_equals_site_by_site(make):
    if make == "random":
        table = _random_table(4, 6, seed=3)
    elif make == "budget":
        table = _random_table(4, 6, seed=4, budget=2)
    else:
        table = _phase_table()
    x = torch.randn(table.sites, 300, generator=_gen(5), dtype=F64)
    batch = value(x, table)
    for s in range(table.sites):
        alone = value(x[s : s + 1], table.select(s))
        assert torch.equal(batch[s : s + 1], alone)
        # Any activation shape coded by one site matches the flat result.
        shaped = fast_site_value(x[s].reshape(3, 10, 10), table.select(s), compiled=False)
        assert shaped.shape == (3, 10, 10)
        assert torch.equal(shaped.reshape(-1), batch[s])
    # A multi-dimensional [S, ...] batch matches the flat one.
    assert torch.equal(value(x.reshape(table.sites, 6, 50), table).reshape(x.shape), batch)


def test_value_rejects_site_mismatch():
    with pytest.raises(ValueError):
        value(torch.zeros(3, 4), _random_table(2, 3, 0).to(torch.float32))


@pytest.mark.parametrize("make", ["random", "phase", "spikedattention"])
def test_spikes_are_ternary_and_decode_to_value(make):
    if make == "random":
        table = _random_table(3, 5, seed=7)
    elif make == "phase":
        table = _phase_table()
    else:
        table = baselines.spikedattention(torch.tensor([1.0, 2.0, 3.0], dtype=F64), 6)
    x = torch.randn(table.sites, 4, 50, generator=_gen(8), dtype=F64) * 2
    train = spikes(x, table)
    assert train.shape == (table.timesteps, *x.shape)
    assert set(train.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert set(train.unique().tolist()) >= {-1.0, 1.0}  # both signs actually occur
    # Each spike carries the sign of its input.
    assert ((train * torch.sign(x)[None]) >= 0).all()
    torch.testing.assert_close(decode(train, table), value(x, table), rtol=0, atol=1e-12)


def test_spike_budget_limits_count():
    tau = torch.tensor([1.0, 2.5], dtype=F64)
    x = torch.rand(2, 4000, generator=_gen(9), dtype=F64) * 3 - 1.5
    sa = spikes(x, baselines.spikedattention(tau, 8))
    counts = sa.abs().sum(0)
    assert counts.max() == 2 and (counts == 2).any()
    tt = spikes(x, baselines.ttfs(tau, 8))
    counts = tt.abs().sum(0)
    assert counts.max() == 1 and (counts == 1).any()
    # Without the budget, LAS fires more than twice for many inputs.
    assert (spikes(x, baselines.las(tau, 8)).abs().sum(0) > 2).any()


def test_spikedattention_keeps_the_two_leading_bits():
    tau = torch.tensor([1.0], dtype=F64)
    t = 6
    k = torch.arange(2**t, dtype=F64)
    out = value(k[None] / 2**t, baselines.spikedattention(tau, t))[0]
    # LAS with at most two spikes: the two most significant set bits of k survive.
    expect = []
    for n in k.long().tolist():
        bits = [b for b in range(t - 1, -1, -1) if n >> b & 1][:2]
        expect.append(sum(1 << b for b in bits) / 2**t)
    assert out.tolist() == expect


@pytest.mark.parametrize("timesteps", [1, 4, 9])
def test_rate_code_closed_form(timesteps):
    tau = torch.tensor([1.0, 0.3, 7.0], dtype=F64)
    g = _gen(timesteps)
    x = (torch.rand(3, 3000, generator=g, dtype=F64) * 3 - 1.5) * tau[:, None]
    table = baselines.rate(tau, timesteps)
    step = tau[:, None] / timesteps
    count = torch.floor(x.abs() / step).clamp(max=timesteps)
    expect = torch.sign(x) * count * step
    torch.testing.assert_close(value(x, table), expect, rtol=0, atol=1e-12)
    assert torch.equal(spikes(x, table).abs().sum(0), count)


def test_ttfs_closed_form():
    tau = torch.tensor([1.0, 2.0], dtype=F64)
    t = 8
    x = torch.rand(2, 3000, generator=_gen(11), dtype=F64) * 5 - 2.5
    out = value(x, baselines.ttfs(tau, t))
    level = torch.floor(x.abs() * t / tau[:, None]).clamp(max=t) * tau[:, None] / t
    torch.testing.assert_close(out, torch.sign(x) * level, rtol=0, atol=1e-12)
    # The earlier it fires, the larger the value.
    train = spikes(x.abs(), baselines.ttfs(tau, t))
    first = train.argmax(0)
    fired = train.sum(0) > 0
    big = out.abs()[fired]
    order = first[fired]
    assert (big[order == 0] > big[order == t - 1].max()).all()


@pytest.mark.parametrize("make", ["random", "phase", "las", "spikedattention", "ttfs", "rate"])
def test_value_is_odd(make):
    tau = torch.tensor([0.7, 1.9, 4.0], dtype=F64)
    table = {
        "random": lambda: _random_table(3, 5, seed=12),
        "phase": _phase_table,
        "las": lambda: baselines.las(tau, 5),
        "spikedattention": lambda: baselines.spikedattention(tau, 5),
        "ttfs": lambda: baselines.ttfs(tau, 5),
        "rate": lambda: baselines.rate(tau, 5),
    }[make]()
    x = torch.randn(3, 500, generator=_gen(13), dtype=F64) * 3
    x[:, 0] = 0.0
    pos = value(x, table)
    assert torch.equal(value(-x, table), -pos)
    assert (pos[:, 0] == 0).all()
    assert pos.abs().amax(1).gt(0).all()  # not trivially zero


def test_baselines_reject_bad_timesteps():
    tau = torch.ones(2)
    for build in (baselines.las, baselines.spikedattention, baselines.ttfs, baselines.rate):
        with pytest.raises(PhasecodeError):
            build(tau, 0)
    with pytest.raises(PhasecodeError):
        baselines.phase(2, MAX_TIMESTEPS + 1)


def test_max_value_and_to():
    table = _phase_table()
    torch.testing.assert_close(table.max_value(), table.weight.sum(1))
    x = torch.full((3, 1), 1e6, dtype=F64)
    las = baselines.las(torch.tensor([1.0, 2.0, 3.0], dtype=F64), 5)
    torch.testing.assert_close(value(x[:, 0:1], las)[:, 0], las.max_value())
    single = table.to(torch.float32)
    assert single.weight.dtype == torch.float32 and single.phase.bases.dtype == torch.float32
    assert single.max_spikes.dtype == torch.long


@pytest.mark.parametrize("budget", [None, 3])
@pytest.mark.parametrize("strength", [0, 2])
def test_fused_kernel_is_bit_identical_with_and_without_budget_and_mask(budget, strength):
    """The kernel skips its spike counter and mask bookkeeping when a site has neither; every
    combination gives the reference dynamics' value, compiled and eager."""
    tau = torch.tensor([1.7], dtype=F64)
    table = baselines.spikedattention(tau, 6) if budget else baselines.las(tau, 6)
    if budget:
        table = CodeTable(table.threshold, table.reset, table.weight, torch.tensor([budget]))
    table = table.to(torch.float32)
    x = torch.randn(1, 4000, generator=_gen(11)).to(torch.float32) * 1.2
    reference = (mask_spikes(spikes(x, table), strength) * table.weight.T[:, :, None]).sum(0)
    if budget:  # the budget binds somewhere, or the test would not test it
        assert (spikes(x, table).abs().sum(0) == budget).any()
    for compiled in (False, True):
        fast = fast_site_value(x[0], table, compiled=compiled, mask_strength=strength)
        assert torch.equal(fast, reference[0])
