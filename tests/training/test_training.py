"""Training layer: surrogate gradient, scale calibration, Alg. 1, Alg. 2 and the yardsticks."""

from __future__ import annotations

import itertools

import pytest
import torch

from phasecode.coding import baselines
from phasecode.coding.allocation import candidate_allocations
from phasecode.coding.neuron import fire_steps, value
from phasecode.coding.table import UNLIMITED, CodeTable, phase_weights
from phasecode.errors import PhasecodeError
from phasecode.settings import TrainConfig
from phasecode.training.alternating import _Loss, init_neurons, train_neurons
from phasecode.training.neurons import (
    MIN_BASE,
    PhaseNeurons,
    quadratic_loss,
    rounding_las,
    spike_statistics,
)
from phasecode.training.scale_fit import fit_scale, fit_tau
from phasecode.training.search import search_allocation
from phasecode.training.uniform import best_step, grid_quantize
from phasecode.training.yardstick import (
    MAX_LEVELS,
    assign,
    level_count,
    lloyd_max,
    lloyd_max_mse,
    quantize,
    uniform_mse,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mse(x: torch.Tensor, table: CodeTable) -> torch.Tensor:
    return (value(x, table) - x).pow(2).mean(1)


def _random_table(sites: int, timesteps: int, seed: int) -> CodeTable:
    g = _gen(seed)
    parts = [torch.rand(sites, timesteps, generator=g, dtype=F64) * 0.5 + 0.02 for _ in range(3)]
    return CodeTable(*parts, torch.full((sites,), UNLIMITED, dtype=torch.long))


# ---------------------------------------------------------------- surrogate


def test_surrogate_values_carry_exact_values_and_true_scale_gradient():
    tau = torch.tensor([0.8, 1.3], dtype=F64)
    neurons = PhaseNeurons(tau, [(2, 3), (5,)])
    magnitude = torch.rand(2, 300, generator=_gen(3), dtype=F64)
    values, count = neurons.surrogate_values(magnitude, sharpness=4.0)
    exact = torch.stack(list(fire_steps(magnitude, neurons.frozen_table())), 1).sum(1)
    torch.testing.assert_close(count.detach(), exact, rtol=0, atol=0)  # spikes per sample
    torch.testing.assert_close(values, value(magnitude, neurons.table()), rtol=0, atol=1e-15)
    values.sum().backward()
    # d ∝ scale and the spikes do not depend on d: ∂ΣSN/∂log(scale) = ΣSN exactly.
    torch.testing.assert_close(neurons.log_scale.grad, values.detach().sum(1))
    assert neurons.u_threshold.grad.abs().sum() > 0 and neurons.u_reset.grad.abs().sum() > 0


def test_spike_count_has_a_surrogate_gradient_even_where_nothing_fired():
    """The energy term must be able to move thresholds of neurons that did not fire."""
    neurons = PhaseNeurons(torch.tensor([1.0], dtype=F64), [(4,)], signed=True)
    magnitude = torch.full((1, 50), 0.02, dtype=F64)  # below every threshold: no spike
    _, count = neurons.surrogate_values(magnitude, sharpness=4.0)
    assert count.detach().sum() == 0
    count.sum().backward()
    assert neurons.u_threshold.grad.abs().sum() > 0


# ---------------------------------------------------------------- quadratic loss


@pytest.mark.parametrize("seed", [0, 1])
def test_quadratic_loss_equals_direct_mse(seed):
    table = _random_table(3, 5, seed)
    magnitude = torch.rand(3, 700, generator=_gen(seed + 5), dtype=F64) * 1.5
    stats = spike_statistics(magnitude, table)
    gram, cross, energy, count = stats
    assert gram.shape == (3, 5, 5) and cross.shape == (3, 5) and energy.shape == (3,)
    torch.testing.assert_close(gram, gram.transpose(1, 2))
    spikes = torch.stack(list(fire_steps(magnitude, table)), 1)
    torch.testing.assert_close(torch.diagonal(gram, dim1=1, dim2=2), spikes.mean(2))
    torch.testing.assert_close(count, (spikes != 0).sum(1).to(F64).mean(1))
    torch.testing.assert_close(
        quadratic_loss(table.weight, stats), _mse(magnitude, table), rtol=1e-10, atol=1e-14
    )
    # Exact quadratic in d while θ, h are fixed: any other d gives its own exact MSE.
    other = torch.rand(3, 5, generator=_gen(seed + 9), dtype=F64)
    swapped = CodeTable(table.threshold, table.reset, other, table.max_spikes)
    torch.testing.assert_close(
        quadratic_loss(other, stats), _mse(magnitude, swapped), rtol=1e-10, atol=1e-14
    )


# ---------------------------------------------------------------- fit_scale


def _brute_scale_mse(x, timesteps, build, lo, hi, points=401):
    """Best MSE over a dense linear grid of τ = top·f, f in [lo, hi]."""
    top = x.abs().amax(1)
    grid = torch.linspace(lo, hi, points, dtype=F64)
    errs = torch.stack([_mse(x, build(top * float(f), timesteps)) for f in grid], 1)
    return errs.min(1).values


@pytest.mark.parametrize("timesteps", [2, 4])
def test_fit_scale_las_uniform_is_near_optimal(timesteps):
    x = torch.rand(3, 3000, generator=_gen(timesteps), dtype=F64)
    tau = fit_scale(x, timesteps, baselines.las)
    fitted = _mse(x, baselines.las(tau, timesteps))
    at_max = _mse(x, baselines.las(x.amax(1), timesteps))
    brute = _brute_scale_mse(x, timesteps, baselines.las, 0.5, 1.5)
    assert (fitted <= at_max).all()
    assert (fitted <= brute * 1.03).all()
    assert ((tau - 1).abs() < 0.1).all()


@pytest.mark.parametrize("method", ["las", "rate", "ttfs"])
def test_fit_scale_and_fit_tau_clip_gaussian_tails(method):
    # For Gaussian samples and T = 3 the best τ clips the tails: τ = max is far worse.
    build = baselines.FIXED_CODES[method]
    x = torch.randn(2, 2000, generator=_gen(8), dtype=F64)
    brute = _brute_scale_mse(x, 3, build, 0.05, 1.2)
    at_max = _mse(x, build(x.abs().amax(1), 3))
    assert (at_max > brute * 1.3).all()
    for tau in (fit_scale(x, 3, build), fit_tau(method, x, 3, build)):
        assert (_mse(x, build(tau, 3)) <= brute * 1.03).all()


def test_fit_tau_falls_back_to_simulation_for_other_codes():
    x = torch.randn(2, 500, generator=_gen(9), dtype=F64)
    tau = fit_tau("spikedattention", x, 4, baselines.spikedattention)
    assert torch.equal(tau, fit_scale(x, 4, baselines.spikedattention))


@pytest.mark.parametrize("rounding", [False, True])
def test_best_step_is_near_brute_force(rounding):
    mag = torch.randn(2, 2000, generator=_gen(10), dtype=F64).abs() ** 1.5
    levels = 8
    step = best_step(mag, levels, rounding)
    q = grid_quantize(mag, step, levels, rounding)
    # Levels are 0, Δ, …, (L−1)Δ: nearest one, or next lower one when truncating.
    index = q / step[:, None]
    torch.testing.assert_close(index, index.round())
    assert index.max() <= levels - 1 and index.min() >= 0
    if rounding:
        inside = mag < (levels - 1) * step[:, None]
        half = (step[:, None] / 2).expand_as(mag)
        assert ((q - mag).abs()[inside] <= half[inside] + 1e-12).all()
    else:
        assert (q <= mag + 1e-12).all()
    got = (q - mag).pow(2).mean(1)
    top = mag.amax(1) / (levels - 1)
    grid = torch.linspace(0.05, 1.2, 401, dtype=F64)
    errs = [
        (grid_quantize(mag, top * float(f), levels, rounding) - mag).pow(2).mean(1) for f in grid
    ]
    brute = torch.stack(errs, 1).min(1).values
    assert (got <= brute * 1.005).all()


@pytest.mark.parametrize("build", [baselines.las, baselines.rate, baselines.ttfs, rounding_las])
def test_fit_scale_is_scale_equivariant_and_per_site(build):
    g = _gen(11)
    x = torch.randn(3, 500, generator=g, dtype=F64)
    x = x * torch.tensor([[1.0], [0.01], [40.0]], dtype=F64)
    tau = fit_scale(x, 4, build)
    assert torch.equal(fit_scale(x * 8, 4, build), tau * 8)  # powers of two: bit-exact
    assert torch.equal(fit_scale(-x, 4, build), tau)
    assert torch.equal(fit_scale(x[1:2], 4, build), tau[1:2])
    # Each code's fitted τ beats its τ = max.
    assert (_mse(x, build(tau, 4)) <= _mse(x, build(x.abs().amax(1), 4))).all()


# ---------------------------------------------------------------- neurons init


def test_rounding_las_rounds_to_nearest_level():
    tau = torch.tensor([1.0, 0.37, 5.0], dtype=F64)
    t = 5
    x = (torch.rand(3, 3000, generator=_gen(12), dtype=F64) * 2.4 - 1.2) * tau[:, None]
    step = tau[:, None] * 2.0**-t
    expect = torch.sign(x) * torch.round(x.abs() / step).clamp(max=2**t - 1) * step
    torch.testing.assert_close(value(x, rounding_las(tau, t)), expect, rtol=0, atol=1e-12)


@pytest.mark.parametrize("coupled", [False, True])
def test_phase_neurons_start_from_rounding_las(coupled):
    tau = torch.tensor([0.5, 2.0], dtype=F64)
    neurons = PhaseNeurons(tau, [(3, 3), (1, 2, 3)], coupled=coupled)
    table = neurons.table()
    ref = rounding_las(tau, 6)
    torch.testing.assert_close(table.weight, ref.weight)
    torch.testing.assert_close(table.threshold, ref.threshold)
    torch.testing.assert_close(table.reset, ref.threshold if coupled else ref.reset)
    assert table.phase.allocation == ((3, 3), (1, 2, 3))
    assert (len(neurons.spike_parameters()), coupled) in [(1, True), (2, False)]


# ---------------------------------------------------------------- Alg. 1


HEAVY_SCALES = [1.0, 0.01, 30.0, 0.5]
HEAVY_ALLOC = [(6,), (3, 3), (2, 2, 2), (4, 2)]
HEAVY_CONFIG = TrainConfig(rounds=20, batch_samples=None)  # every θ/h step sees all samples


@pytest.fixture(scope="module")
def heavy():
    """Student-t (df=3) samples, 4 sites of very different scales, T = 6, Alg. 1."""
    torch.manual_seed(0)
    x = torch.distributions.StudentT(torch.tensor(3.0, dtype=F64)).sample((4, 8000))
    x = x * torch.tensor(HEAVY_SCALES, dtype=F64)[:, None]
    train, heldout = x[:, :4000], x[:, 4000:]
    return train, heldout, train_neurons(train, HEAVY_ALLOC, HEAVY_CONFIG)


def test_train_loss_curve_and_best_snapshot(heavy):
    train, _, result = heavy
    config = HEAVY_CONFIG
    steps = config.rounds * (config.threshold_steps + config.base_steps)
    assert result.loss_curve.shape == (4, steps)
    assert (
        result.phases
        == (["threshold"] * config.threshold_steps + ["base"] * config.base_steps) * config.rounds
    )
    curve = result.loss_curve
    best = curve.min(1).values
    assert (best < curve[:, 0] * 0.98).all()  # every site improved on its start
    # The returned table is the best one seen, in the samples' own units.
    scale = train.abs().amax(1)
    torch.testing.assert_close(_mse(train, result.table) / scale**2, best, rtol=1e-8, atol=0)


def test_slices_hold_every_sample_once_in_equal_parts():
    torch.manual_seed(0)
    magnitude = torch.rand(3, 1000)
    weight = torch.rand(3, 1000)
    loss = _Loss(magnitude, None, weight)
    slices = loss.slices(300)  # round(1000 / 300) = 3 slices of 334, 333, 333
    assert [b.magnitude.shape[1] for b in slices] == [334, 333, 333]
    torch.testing.assert_close(torch.cat([b.magnitude for b in slices], 1), magnitude)
    torch.testing.assert_close(torch.cat([b.weight for b in slices], 1), weight)
    for size in (None, 1000, 5000):
        whole = loss.slices(size)
        assert len(whole) == 1 and whole[0] is loss


def test_training_on_slices_keeps_the_best_on_every_sample(heavy):
    """θ/h steps on slices: the kept table is the best full-sample loss seen, which the B
    steps and the start offer, so it is never worse than the start."""
    train, _, _ = heavy
    config = TrainConfig(rounds=6, batch_samples=1000)
    result = train_neurons(train, HEAVY_ALLOC, config)
    scale = train.abs().amax(1)
    start = init_neurons((train / scale[:, None]).abs(), HEAVY_ALLOC, False).frozen_table()
    start_mse = _mse(train, start.scaled(scale)) / scale**2
    base = torch.tensor([phase == "base" for phase in result.phases])
    kept = torch.minimum(result.loss_curve[:, base].min(1).values, start_mse)
    torch.testing.assert_close(_mse(train, result.table) / scale**2, kept, rtol=1e-8, atol=0)
    assert (kept < start_mse).all()


def test_train_starts_from_rounding_las_and_never_ends_worse(heavy):
    train, _, result = heavy
    scale = train.abs().amax(1)
    magnitude = train.abs() / scale[:, None]
    # The start: rounding LAS with the MSE-optimal rounding grid (2^T levels).
    tau = best_step(magnitude, 2**6, rounding=True) * 2**6 * scale
    start = _mse(train, rounding_las(tau, 6))
    torch.testing.assert_close(start / scale**2, result.loss_curve[:, 0], rtol=1e-8, atol=0)
    trained = _mse(train, result.table)
    assert (trained <= start * (1 + 1e-9)).all()
    # Also no worse than rounding LAS with τ from the simulated grid search.
    other = fit_scale(magnitude, 6, rounding_las) * scale
    assert (trained <= _mse(train, rounding_las(other, 6)) * (1 + 1e-9)).all()


def test_trained_beats_las_on_heldout(heavy):
    train, heldout, result = heavy
    las = baselines.las(fit_scale(train, 6, baselines.las), 6)
    assert (_mse(heldout, result.table) < _mse(heldout, las)).all()


def test_trained_table_is_a_phase_code(heavy):
    train, _, result = heavy
    table = result.table
    assert table.sites == 4 and table.timesteps == 6
    assert table.phase.allocation == tuple(HEAVY_ALLOC)
    assert table.max_spikes.eq(UNLIMITED).all()
    # d(t) is never free: it is scale · B_g(t)^-t in the samples' units.
    torch.testing.assert_close(table.weight, table.phase.weights(), rtol=1e-12, atol=0)
    bases_used = [table.phase.bases[s, : len(a)] for s, a in enumerate(HEAVY_ALLOC)]
    assert all((b >= MIN_BASE).all() for b in bases_used)
    assert (table.threshold > 0).all() and (table.reset > 0).all()
    # Levels live on each site's own scale.
    ratio = table.max_value() / train.abs().amax(1)
    assert ((ratio > 0.2) & (ratio < 2.0)).all()


def test_train_sites_are_independent():
    x = torch.randn(3, 1500, generator=_gen(21), dtype=F64) ** 3
    config = TrainConfig(rounds=4)
    alloc = [(5,), (2, 3), (3, 2)]
    batch = train_neurons(x, alloc, config).table
    for s in (0, 2):
        alone = train_neurons(x[s : s + 1], [alloc[s]], config).table
        for name in ("threshold", "reset", "weight"):
            torch.testing.assert_close(
                getattr(alone, name), getattr(batch, name)[s : s + 1], rtol=1e-6, atol=0
            )


def test_train_is_scale_and_sign_equivariant():
    x = torch.randn(2, 1000, generator=_gen(22), dtype=F64) ** 3
    config = TrainConfig(rounds=3)
    alloc = [(2, 2), (4,)]
    base = train_neurons(x, alloc, config)
    scaled = train_neurons(x * 4, alloc, config)  # a power of two keeps everything exact
    flipped = train_neurons(-x, alloc, config)
    four = torch.full((2,), 4.0, dtype=F64)
    for name in ("threshold", "reset", "weight"):
        assert torch.equal(getattr(scaled.table, name), getattr(base.table.scaled(four), name))
        assert torch.equal(getattr(flipped.table, name), getattr(base.table, name))
    assert torch.equal(scaled.loss_curve, base.loss_curve)


@pytest.mark.parametrize("mode", ["joint", "coupled"])
def test_train_modes(mode):
    torch.manual_seed(23)
    x = torch.distributions.Laplace(0.0, 1.0).sample((2, 1500)).to(F64)
    config = TrainConfig(mode=mode, rounds=3)
    result = train_neurons(x, [(3, 3), (6,)], config)
    table = result.table
    curve = result.loss_curve
    scale = x.abs().amax(1)
    torch.testing.assert_close(_mse(x, table) / scale**2, curve.min(1).values, rtol=1e-8, atol=0)
    las = baselines.las(fit_scale(x, 6, baselines.las), 6)
    if mode == "joint":
        assert result.phases == ["joint"] * (config.rounds * config.threshold_steps)
        assert curve.shape == (2, config.rounds * config.threshold_steps)
        assert not torch.equal(table.reset, table.threshold)
    else:
        assert torch.equal(table.reset, table.threshold)  # h = θ
        assert set(result.phases) == {"threshold", "base"}
        # LAS (θ = h = d) belongs to the coupled family; training must beat it.
        assert (_mse(x, table) < _mse(x, las)).all()


def test_unknown_mode_is_rejected():
    with pytest.raises(PhasecodeError, match="mode"):
        TrainConfig(mode="greedy")


# ---------------------------------------------------------------- Alg. 2


def test_search_single_candidate_is_trivial():
    x = torch.randn(3, 100, generator=_gen(30), dtype=F64)
    picks, alpha = search_allocation(x, 5, 1)
    assert picks == [(5,)] * 3 and alpha.shape == (3, 1)
    with pytest.raises(PhasecodeError):
        search_allocation(x, 3, 4)


def _levels(weights: list[float]) -> torch.Tensor:
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=len(weights))), dtype=F64)
    return (masks @ torch.tensor(weights, dtype=F64)).unique()


def _cluster_samples(centers: torch.Tensor, sites: int, n: int, seed: int) -> torch.Tensor:
    """Signed samples in tight clusters (σ = 0.002) at the given magnitudes."""
    g = _gen(seed)
    idx = torch.randint(len(centers), (sites, n), generator=g)
    mag = (centers[idx] + torch.randn(sites, n, generator=g, dtype=F64) * 0.002).abs()
    sign = torch.where(torch.rand(sites, n, generator=g) < 0.5, -1.0, 1.0).to(F64)
    return sign * mag


# Clusters on the level set of one phase code with T = 4 over two grains; only the named
# allocation can reproduce it (the d(t) within a grain are geometric with one ratio):
#   (3, 1): d = (1/2, 1/4, 1/8 | 0.035)          -> grain 2 only shrinks the last step
#   (2, 2): d = (1/2, 1/4 | 2.2^-3, 2.2^-4)      -> grain 2 has its own base 2.2
TWO_SCALE_CASES = {
    (3, 1): _levels([0.5, 0.25, 0.125, 0.035]),
    (2, 2): _levels([0.5, 0.25, 2.2**-3, 2.2**-4]),
}
# The default η1 = 0.03 makes the one-step-per-iteration search oscillate (see the report);
# a smaller threshold rate and more search steps make it agree with separate training.
SEARCH_CONFIG = TrainConfig(rounds=30, lr_threshold=0.003, lr_base=0.03, search_steps=120)


@pytest.mark.parametrize("seed", [1, 3])
@pytest.mark.parametrize("best", list(TWO_SCALE_CASES))
def test_search_picks_the_clearly_better_allocation(best, seed):
    x = _cluster_samples(TWO_SCALE_CASES[best], sites=2, n=1000, seed=seed)
    candidates = candidate_allocations(4, 2)
    # Ground truth: train every candidate separately.
    scale = x.abs().amax(1)
    errs = torch.stack(
        [_mse(x, train_neurons(x, [c] * 2, SEARCH_CONFIG).table) / scale**2 for c in candidates],
        1,
    )
    winner = candidates.index(best)
    others = torch.cat([errs[:, :winner], errs[:, winner + 1 :]], 1)
    assert (errs[:, winner] * 5 < others.min(1).values).all(), errs
    picks, alpha = search_allocation(x, 4, 2, SEARCH_CONFIG)
    assert alpha.shape == (2, len(candidates))
    assert picks == [best] * 2, (picks, alpha)


# ---------------------------------------------------------------- yardsticks


def _brute_quantizer_mse(points: list[float], levels: int) -> float:
    """Optimal MSE: the best split of the sorted points into contiguous cells."""
    xs = sorted(points)
    n = len(xs)
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), levels - 1):
        bounds = (0, *cuts, n)
        err = 0.0
        for a, b in itertools.pairwise(bounds):
            cell = torch.tensor(xs[a:b], dtype=F64)
            err += (cell - cell.mean()).pow(2).sum().item()
        best = min(best, err / n)
    return best


@pytest.mark.parametrize(
    "points",
    [
        [0.01, 0.1, 0.15, 0.4, 0.5, 0.55, 0.8, 0.95, 1.0],
        [0.02, 0.03, 0.05, 0.3, 0.33, 0.41, 0.7, 0.72, 0.9],
        [0.01, 0.2, 0.21, 0.22, 0.6, 0.61, 0.62, 0.63, 0.99],
    ],
)
def test_lloyd_max_matches_brute_force(points):
    x = torch.tensor([points], dtype=F64)
    levels = lloyd_max(x, 3)
    assert levels.shape == (1, 3) and torch.equal(levels, levels.sort(1).values)
    got = (quantize(x, levels) - x).pow(2).mean().item()
    assert abs(got - _brute_quantizer_mse(points, 3)) < 1e-9


@pytest.mark.xfail(
    strict=True,
    reason="lloyd_max is only a local optimum: on this 9-point set (seed 4) it stops at "
    "MSE 0.0144 while the best 3-level quantizer reaches 0.00575",
)
def test_lloyd_max_global_optimum_on_random_points():
    x = torch.rand(1, 9, generator=_gen(4), dtype=F64)
    got = (quantize(x, lloyd_max(x, 3)) - x).pow(2).mean().item()
    assert abs(got - _brute_quantizer_mse(x[0].tolist(), 3)) < 1e-9


@pytest.mark.parametrize("seed", [0, 4, 6])
def test_lloyd_max_is_a_fixed_point(seed):
    # Centroid condition: each level is the mean of the samples it quantizes.
    x = torch.rand(2, 300, generator=_gen(seed), dtype=F64) ** 2
    levels = lloyd_max(x, 8)
    cell = assign(x, levels)
    for s in range(2):
        for i in range(8):
            members = x[s][cell[s] == i]
            if len(members):
                torch.testing.assert_close(members.mean(), levels[s, i], rtol=1e-12, atol=1e-14)


def test_level_count_caps():
    assert level_count(3, 1000) == 8
    assert level_count(6, 1000) == 64
    assert level_count(8, 100) == 100
    assert level_count(16, 10**6) == MAX_LEVELS == 65536
    assert level_count(20, 10**7) == MAX_LEVELS
    assert level_count(128, 10**9) == MAX_LEVELS


def test_uniform_is_never_better_than_lloyd_max_on_training_data():
    torch.manual_seed(40)
    g = _gen(40)
    samples = torch.stack(
        [
            torch.randn(2000, generator=g, dtype=F64),
            torch.rand(2000, generator=g, dtype=F64) * 2 - 1,
            torch.randn(2000, generator=g, dtype=F64) ** 3,
            torch.distributions.Laplace(0.0, 3.0).sample((2000,)).to(F64),
        ]
    )
    for t in (2, 4):
        lloyd = lloyd_max_mse(samples, samples, t)
        uniform = uniform_mse(samples, samples, t)
        assert (uniform >= lloyd * (1 - 1e-9)).all(), (t, uniform, lloyd)
    # Uniform data: with 16 levels the uniform code (which keeps 0 as a level) is near optimal.
    assert uniform[1] <= lloyd[1] * 1.15
    assert (uniform[2:] >= lloyd[2:] * 2).all()  # heavy tails: it is not


def test_quantize_keeps_sign_and_levels():
    levels = torch.tensor([[0.0, 0.3, 1.0], [0.1, 0.2, 0.4]], dtype=F64)
    x = torch.tensor([[-0.9, -0.1, 0.16, 0.7, 0.0], [-0.31, 0.05, -0.05, 9.0, 0.0]], dtype=F64)
    expect = torch.tensor([[-1.0, -0.0, 0.3, 1.0, 0.0], [-0.4, 0.1, -0.1, 0.4, 0.0]], dtype=F64)
    assert torch.equal(quantize(x, levels), expect)
    y = torch.randn(2, 200, generator=_gen(41), dtype=F64)
    assert torch.equal(quantize(-y, levels), -quantize(y, levels))
    q = quantize(y, levels)
    assert ((torch.sign(q) == torch.sign(y)) | (q == 0)).all()


def test_lloyd_max_mse_scores_heldout_with_sign():
    g = _gen(42)
    train = torch.randn(2, 1000, generator=g, dtype=F64)
    heldout = torch.randn(2, 1000, generator=g, dtype=F64)
    levels = lloyd_max(train.abs(), level_count(3, 1000))
    expect = (quantize(heldout, levels) - heldout).pow(2).mean(1)
    torch.testing.assert_close(lloyd_max_mse(train, heldout, 3), expect)
    torch.testing.assert_close(lloyd_max_mse(train, -heldout, 3), expect)
    # Exact zeros are coded as 0 whatever the levels (sign rule), like the neuron.
    assert quantize(torch.zeros(2, 3, dtype=F64), levels).eq(0).all()


def test_lloyd_max_with_one_level_per_sample_is_exact():
    small = torch.randn(2, 50, generator=_gen(42), dtype=F64)
    assert level_count(8, 50) == 50
    assert [len(row.unique()) for row in lloyd_max(small.abs(), 50)] == [50, 50]
    assert lloyd_max_mse(small, small, 8).max() < 1e-20


def test_phase_weights_of_trained_bases_match_table(heavy):
    _, _, result = heavy
    p = result.table.phase
    torch.testing.assert_close(phase_weights(p.scale, p.bases, p.allocation), result.table.weight)
