"""The training objectives beyond plain MSE: the Fisher weights (E[g² | x] binned by the
gradient probe, weighted Alg. 1 and Alg. 2) and the κ·(mean error)² term for attention
probabilities, and their conversion options."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import tiny_calibrated

from phasecode.coding.neuron import value
from phasecode.conversion import convert
from phasecode.conversion.convert import fit_spiking
from phasecode.conversion.sensitivity import GradientProbe, Sensitivity, bin_edges
from phasecode.errors import PhasecodeError
from phasecode.models.sites import site_kind
from phasecode.settings import PROBS_BIAS, FitSettings, TrainConfig
from phasecode.training.alternating import init_neurons, site_scale, train_neurons
from phasecode.training.neurons import quadratic_loss, spike_statistics
from phasecode.training.objective import site_error, squared_error

F64 = torch.float64
FAST = TrainConfig(rounds=2, search_steps=2, search_samples=64)


def _fit(timesteps: int, grains: int, **settings) -> FitSettings:
    """mgpc at the fitted range: these tests compare trainings, which auto's choice of range
    (a coded forward of its own) would blur."""
    return FitSettings("mgpc", timesteps, grains, FAST, neuron_range="fitted", **settings)


def test_probe_bins_the_squared_gradient_by_magnitude():
    """L = Σ x²/2 has g = x, so E[g² | bin] is the bin's mean x² and F is Σ x² per token."""
    torch.manual_seed(0)
    samples = torch.randn(1, 5000, dtype=F64)
    edges = bin_edges(samples, bins=4)
    probe = GradientProbe(["layers.0.silu"], edges)
    x = samples.clone().requires_grad_()
    probe("layers.0.silu", x)
    (x.pow(2) / 2).sum().backward()
    result = probe.result(tokens=10)
    bins = torch.bucketize(samples.abs()[0], edges[0])
    expected = torch.stack([samples[0][bins == b].pow(2).mean() for b in range(4)])
    torch.testing.assert_close(result.curve[0], expected)
    torch.testing.assert_close(result.fisher, samples.pow(2).sum(1) / 10)
    assert result.curve[0].diff().gt(0).all()  # larger |x|, larger gradient here


def test_empty_bins_take_the_nearest_filled_bin():
    probe = GradientProbe(
        ["layers.0.silu", "layers.0.down"], torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    )
    x = torch.tensor([0.5, 0.5, 3.5], dtype=F64, requires_grad=True)
    probe("layers.0.silu", x)
    (x * torch.tensor([1.0, 1.0, 3.0], dtype=F64)).sum().backward()
    result = probe.result(tokens=1)
    assert result.curve[0].tolist() == [1.0, 1.0, 9.0, 9.0]
    assert result.curve[1].tolist() == [1.0, 1.0, 1.0, 1.0]  # no gradient seen: flat


def test_weights_follow_the_curve_with_mean_one():
    sensitivity = Sensitivity(
        torch.ones(2, dtype=F64),
        torch.tensor([[1.0], [1.0]], dtype=F64),
        torch.tensor([[1.0, 4.0], [2.0, 2.0]], dtype=F64),
    )
    samples = torch.tensor([[0.5, -2.0, 0.2, 3.0], [0.5, -2.0, 0.2, 3.0]], dtype=F64)
    weight = sensitivity.weights(samples)
    torch.testing.assert_close(weight.mean(1), torch.ones(2, dtype=F64))
    assert weight[0].tolist() == [0.4, 1.6, 0.4, 1.6]
    assert weight[1].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_weighted_statistics_give_the_weighted_error_exactly():
    torch.manual_seed(1)
    magnitude = torch.rand(3, 400, dtype=F64)
    weight = torch.rand(3, 400, dtype=F64) * 2
    neurons = init_neurons(magnitude, [(3, 2)] * 3, False)
    table = neurons.frozen_table()
    direct = squared_error(value(magnitude, table), magnitude, weight)
    quadratic = quadratic_loss(table.weight, spike_statistics(magnitude, table, weight))
    torch.testing.assert_close(quadratic, direct)


def test_bias_term_is_exact_in_the_quadratic_too():
    torch.manual_seed(3)
    magnitude = torch.rand(2, 300, dtype=F64).pow(4)
    weight = torch.rand(2, 300, dtype=F64)
    bias = torch.tensor([0.0, 50.0], dtype=F64)
    table = init_neurons(magnitude, [(2, 2)] * 2, False).frozen_table()
    direct = site_error(value(magnitude, table), magnitude, weight, bias)
    stats = spike_statistics(magnitude, table, weight, bias)
    torch.testing.assert_close(quadratic_loss(table.weight, stats), direct)


def test_bias_term_keeps_the_mass_of_skewed_probabilities():
    """Probability-like samples (most tiny): plain MSE training zeroes the tiny ones and loses
    mass; with κ the mean error shrinks at a bounded cost in MSE."""
    torch.manual_seed(4)
    probs = torch.distributions.Dirichlet(torch.full((64,), 0.3)).sample((60,)).flatten()
    samples = probs[probs > 0][None].to(F64)
    config = TrainConfig(rounds=10)
    plain = train_neurons(samples, [(3, 1)], config).table
    kept = train_neurons(samples, [(3, 1)], config, bias=torch.tensor([64.0], dtype=F64)).table

    def mean_error(table):
        return (value(samples, table) - samples).mean().abs()

    assert mean_error(kept) < 0.5 * mean_error(plain)
    assert squared_error(value(samples, kept), samples) < 4 * squared_error(
        value(samples, plain), samples
    )


def test_weighted_training_spends_precision_where_the_weight_is():
    """Samples whose error matters (weight 20× the rest) end with a smaller error than plain
    MSE training gives them; the plain objective does better on the unweighted error."""
    torch.manual_seed(2)
    samples = torch.randn(1, 4000, dtype=F64)
    weight = torch.where(samples.abs() > 1.5, 20.0, 1.0).to(F64)
    weight = weight / weight.mean()
    config = TrainConfig(rounds=10)
    plain = train_neurons(samples, [(3, 2)], config).table
    weighted = train_neurons(samples, [(3, 2)], config, weight=weight).table

    def errors(table):
        coded = value(samples, table)
        return squared_error(coded, samples, weight), squared_error(coded, samples)

    plain_weighted, plain_mse = errors(plain)
    weighted_weighted, weighted_mse = errors(weighted)
    assert weighted_weighted < 0.9 * plain_weighted
    assert plain_mse < weighted_mse
    assert site_scale(samples) > 0


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_tokenizer):
    return tiny_calibrated(tmp_path_factory.mktemp("fisher"), tiny_tokenizer)


def test_fisher_conversion_reports_and_lowers_its_own_objective(calibrated):
    fisher = fit_spiking(calibrated, _fit(4, 2, objective="fisher"), False)
    plain = fit_spiking(calibrated, _fit(4, 2), False)
    assert fisher.report["objective"] == "fisher" and plain.report["objective"] == "mse"
    weighted = [row["fisher_mse"] for row in fisher.report["sites"]]
    assert all(w >= 0 for w in weighted) and len(weighted) == len(calibrated.sites)
    assert "fisher_mse" not in plain.report["sites"][0]
    assert "mean_error" in plain.report["sites"][0]
    sensitivity = calibrated.sensitivity(progress=False)
    assert sensitivity.curve.shape[0] == len(calibrated.sites)
    assert (sensitivity.fisher > 0).all()


@pytest.mark.parametrize("method", ["las", "rate"])
def test_fisher_objective_needs_trained_neurons(method):
    with pytest.raises(PhasecodeError, match="needs --method mgpc"):
        FitSettings(method, 4, 1, objective="fisher")


def test_unknown_objective_is_refused():
    with pytest.raises(PhasecodeError, match="unknown objective"):
        FitSettings(objective="kl")


def test_probs_bias_conversion_trains_only_the_probability_sites(calibrated):
    fit = _fit(3, 1, probs_bias=64.0)
    spiking = fit_spiking(calibrated, fit, False)
    assert spiking.report["probs_bias"] == 64.0
    plain = fit_spiking(calibrated, _fit(3, 1), False)
    for i, site in enumerate(calibrated.sites):
        same = torch.equal(spiking.table.select(i).threshold, plain.table.select(i).threshold)
        assert same == (site_kind(site) != "probs"), site


def _probs_rows_equal(a, b, sites) -> bool:
    rows = [i for i, site in enumerate(sites) if site_kind(site) == "probs"]
    return all(torch.equal(a.table.select(i).threshold, b.table.select(i).threshold) for i in rows)


def test_probs_bias_auto_keeps_the_kappa_of_lower_calibration_loss(calibrated):
    """auto trains both κ and keeps the table of the one whose coded model scores the lower
    NLL on calibration windows; the report says which, and why."""
    auto = fit_spiking(calibrated, _fit(3, 1, probs_bias_auto=True), False)
    choice = auto.report["probs_bias_choice"]
    losses = {float(k): v for k, v in choice["loss"].items()}
    assert set(losses) == {0.0, PROBS_BIAS}
    assert choice["chosen"] == min(losses, key=losses.get) == auto.report["probs_bias"]
    fixed = fit_spiking(calibrated, _fit(3, 1, probs_bias=choice["chosen"]), False)
    other = fit_spiking(calibrated, _fit(3, 1, probs_bias=PROBS_BIAS - choice["chosen"]), False)
    assert _probs_rows_equal(auto, fixed, calibrated.sites)
    assert not _probs_rows_equal(auto, other, calibrated.sites)


@pytest.mark.parametrize("favoured", [0.0, PROBS_BIAS])
def test_probs_bias_auto_follows_the_measured_loss(calibrated, monkeypatch, favoured):
    """Whichever κ measures lower is the one kept (the measurement made to favour each)."""
    measured = []
    real = convert.perplexity

    def rigged(*args, **kwargs):
        scored = real(*args, **kwargs)
        kappa = (0.0, PROBS_BIAS)[len(measured)]
        measured.append(kappa)
        return replace(scored, nll=scored.nll * (0.5 if kappa == favoured else 2.0))

    monkeypatch.setattr(convert, "perplexity", rigged)
    auto = fit_spiking(calibrated, _fit(3, 1, probs_bias_auto=True), False)
    assert measured == [0.0, PROBS_BIAS]
    assert auto.report["probs_bias"] == favoured


def test_probs_bias_is_auto_or_a_number():
    with pytest.raises(PhasecodeError, match="either auto or a number"):
        FitSettings(probs_bias=8.0, probs_bias_auto=True)
    with pytest.raises(PhasecodeError, match="mgpc"):
        FitSettings("las", 4, 1, probs_bias_auto=True)


@pytest.mark.parametrize("kappa", [-1.0, float("nan")])
def test_bad_probs_bias_is_refused(kappa):
    with pytest.raises(PhasecodeError, match="--probs-bias"):
        FitSettings(probs_bias=kappa)
    with pytest.raises(PhasecodeError, match="mgpc"):
        FitSettings("las", 4, 1, probs_bias=8.0)
