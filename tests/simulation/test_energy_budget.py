"""Energy-driven conversion: signed-digit neurons and per-site T in the simulator, the energy
estimate against the simulator's counts, the knapsack and the energy-aware training term."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_calibrated

from phasecode.conversion.convert import fit_spiking
from phasecode.errors import PhasecodeError
from phasecode.models.sites import site_kind
from phasecode.settings import EnergyBudget, FitSettings, TrainConfig
from phasecode.simulation.budget import (
    SENSITIVITY_FACTORS,
    SiteOptions,
    _site_energy,
    budget_plan,
    budget_strategy,
    choose_steps,
    measured_sensitivity,
    spike_prices,
)
from phasecode.simulation.counting import Counter
from phasecode.simulation.energy import PRESETS, energy
from phasecode.simulation.estimate import SiteEnergy, site_energy
from phasecode.simulation.network import SpikingSimulator
from phasecode.training.alternating import PRICE_STEP, SpikeBudget, init_neurons, site_scale
from phasecode.training.fit import fit_codes, score_sites

FAST = TrainConfig(rounds=2, search_steps=2, search_samples=64)
LENGTH = 16


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_tokenizer):
    return tiny_calibrated(tmp_path_factory.mktemp("budget"), tiny_tokenizer)


@pytest.fixture(scope="module")
def budgeted(calibrated):
    """Signed-digit neurons with T chosen per site, the budget halfway between the cheapest
    choice and uniform T."""
    fit = FitSettings("mgpc", 6, 2, FAST, code="signed-digit")

    def plan(ratio: float):
        return budget_plan(calibrated, fit, EnergyBudget(ratio, 2, LENGTH), progress=False)

    full = plan(100.0).choice
    assert full.price == 0.0 and (full.steps == 6).all()
    with pytest.warns(UserWarning, match="out of reach"):
        cheapest = plan(1e-6).choice
    assert (cheapest.steps == 2).all()
    middle = (full.predicted_ratio + cheapest.predicted_ratio) / 2
    budget = EnergyBudget(middle, 2, LENGTH, mode="knapsack")
    spiking = fit_spiking(calibrated, fit, False, budget_strategy(budget))
    return spiking, spiking.report["energy_budget"]


def _tokens() -> torch.Tensor:
    return torch.randint(2, 258, (1, LENGTH), generator=torch.Generator().manual_seed(3))


def test_budget_gives_sites_different_timesteps(budgeted):
    spiking, record = budgeted
    steps = spiking.table.steps
    assert spiking.table.signed and steps.min() < steps.max() == 6
    histogram = {str(t): int((steps == t).sum()) for t in sorted(set(steps.tolist()))}
    assert record["steps_histogram"] == histogram
    if record["reachable"]:  # the trained model's own prediction meets the budget
        assert record["predicted_ratio"] <= record["ratio"] * 1.05


def test_simulator_equals_fast_path_for_signed_digits_and_per_site_T(budgeted):
    spiking, _ = budgeted
    tokens = _tokens()
    with spiking.coded():
        fast = spiking.logits(tokens)
    simulated = SpikingSimulator(spiking).forward(tokens)
    assert ((simulated - fast).abs().max() / fast.abs().max()).item() < 1e-9


def test_estimate_matches_the_simulators_counts(budgeted):
    spiking, _ = budgeted
    counter = Counter()
    SpikingSimulator(spiking, counter=counter).forward(_tokens())
    costs = PRESETS["45nm-fp32"]
    estimate = site_energy(spiking.model, spiking.sites, costs, LENGTH)
    per_token = torch.zeros(len(spiking.sites), dtype=torch.float64)
    for (layer, op), count in counter.snn.items():
        name = "lm_head" if layer == "head" else f"{layer}.{op}"
        if name in spiking.sites:
            per_token[spiking.sites.index(name)] = count.spikes / LENGTH
    rate = per_token / estimate.width
    snn = energy(counter.totals("snn"), costs)["total_j"] * 1e12 / LENGTH
    ann = energy(counter.totals("ann"), costs)["total_j"] * 1e12 / LENGTH
    assert estimate.ann_pj == pytest.approx(ann, rel=0.02)
    assert estimate.snn_pj(rate, spiking.table.steps) == pytest.approx(snn, rel=0.05)


def _toy_energy(sites: int) -> SiteEnergy:
    ones = torch.ones(sites, dtype=torch.float64)
    return SiteEnergy(ones * 2.0, ones, ones * 0.1, 0.5, 1.0, ann_pj=10.0 * sites)


def test_knapsack_respects_the_budget_and_spends_it_on_sensitive_sites():
    timesteps = (2, 3, 4)
    spikes = torch.tensor([[1.0, 1.5, 2.0]] * 4, dtype=torch.float64)
    loss = torch.tensor([[4.0, 2.0, 1.0]], dtype=torch.float64) * torch.tensor(
        [[1.0], [10.0], [100.0], [1000.0]], dtype=torch.float64
    )
    options = SiteOptions(timesteps, loss, spikes)
    energy = _toy_energy(4)
    full = energy.ratio(spikes[:, -1], torch.full((4,), 4))
    cheapest = energy.ratio(spikes[:, 0], torch.full((4,), 2))
    for budget in torch.linspace(cheapest, full, 7).tolist():
        choice = choose_steps(options, energy, budget)
        assert choice.reachable and choice.predicted_ratio <= budget + 1e-12
        assert choice.steps.tolist() == sorted(choice.steps.tolist())  # sensitive sites: more T
    assert not choose_steps(options, energy, cheapest * 0.9).reachable
    assert choose_steps(options, energy, full).price == 0.0


def test_energy_term_trades_spikes_for_error_at_its_price():
    generator = torch.Generator().manual_seed(0)
    samples = torch.randn(4, 3000, dtype=torch.float64, generator=generator)
    train = samples[:, :2000]
    fit = FitSettings("mgpc", 6, 1, TrainConfig(rounds=10), code="signed-digit")
    plain = score_sites(fit_codes(train, fit, False).table, train, train)
    price = 0.02 * train.abs().amax(1) ** 2 / 2**6
    priced = score_sites(fit_codes(train, fit, False, spike_cost=price).table, train, train)
    assert (priced["spikes"] < plain["spikes"]).all()
    # the error grew by less than the spikes saved are worth at that price
    objective = {n: s["mse"] + price * s["spikes"] for n, s in (("p", plain), ("q", priced))}
    assert (objective["q"] <= objective["p"] * 1.001).all()


def test_a_spike_is_priced_per_token_at_every_site():
    # λ_s·(spikes per neuron) must be μ·(energy per token) / (½·F_s): a site of 100 neurons
    # per token pays 100× for the same spikes per neuron as a site of one
    ones = torch.ones(2, dtype=torch.float64)
    energy = SiteEnergy(ones * 3.0, torch.tensor([1.0, 100.0], dtype=torch.float64), ones, 0, 0, 1)
    sensitivity = torch.tensor([2.0, 8.0], dtype=torch.float64)
    prices = spike_prices(sensitivity, energy, 0.5)
    spikes_per_neuron = torch.tensor([0.7, 0.7], dtype=torch.float64)
    per_token = energy.width * energy.spike_pj * spikes_per_neuron
    torch.testing.assert_close(
        prices.double() * spikes_per_neuron * sensitivity / 2, 0.5 * per_token, rtol=1e-6, atol=0
    )


def _synthetic_sites() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(2, 2000, dtype=torch.float64, generator=generator)
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((2, 2000)).double()
    return torch.cat([normal, laplace])


def test_spike_budget_training_lands_on_the_budget():
    train = _synthetic_sites()
    fit = FitSettings("mgpc", 6, 1, TrainConfig(rounds=30), code="signed-digit")
    plain = score_sites(fit_codes(train, fit, False).table, train, train)
    energy = torch.tensor([1.0, 4.0, 2.0, 8.0], dtype=torch.float64)
    unit = energy * train.abs().amax(1) ** 2  # λ per unit price ∝ energy (equal sensitivity)
    for share in (0.6, 0.8):
        budget = SpikeBudget(energy, share * float((energy * plain["spikes"]).sum()))
        result = fit_codes(train, fit, False, spike_cost=unit, spike_budget=budget)
        priced = score_sites(result.table, train, train)
        spent = budget.spent(priced["spikes"])
        # chosen on the training samples' exact counts: within the budget, and near it
        assert 0.9 * budget.allowed <= spent <= budget.allowed * (1 + 1e-9), (share, spent)
        assert len(result.prices) == fit.train.rounds + 2  # start, each round, the chosen
        # the costliest site gave up the largest share of its spikes
        saved = 1 - priced["spikes"] / plain["spikes"]
        assert saved[3] > saved[2] and saved[1] > saved[0]


def test_spike_budget_above_the_spend_leaves_the_price_falling():
    train = _synthetic_sites()
    fit = FitSettings("mgpc", 6, 1, TrainConfig(rounds=10), code="signed-digit")
    energy = torch.ones(4, dtype=torch.float64)
    budget = SpikeBudget(energy, 100.0 * 4)  # far more spikes than T=6 can fire
    result = fit_codes(train, fit, False, spike_cost=torch.ones(4), spike_budget=budget)
    assert result.prices == sorted(result.prices, reverse=True)
    # every round at the largest step down
    assert result.prices[-2] == pytest.approx(result.prices[0] * math.exp(-PRICE_STEP * 10))


def test_a_budget_training_cannot_reach_takes_each_sites_sparsest_point():
    # μ·λ·spikes at the prices the choice tries overflows float32: the choice must still be
    # the sparsest points, never the start (the first round, which an all-inf argmin gives)
    train = _synthetic_sites().float()  # a model's samples: float32
    fit = FitSettings("mgpc", 6, 1, TrainConfig(rounds=20), code="signed-digit")
    scale = site_scale(train)
    neurons = init_neurons((train / scale[:, None]).abs(), [(6,)] * 4, False, signed=True)
    start = score_sites(neurons.frozen_table().scaled(scale), train, train)
    energy = torch.tensor([1.0, 4.0, 2.0, 8.0], dtype=torch.float64)
    unit = 1e6 * energy * train.abs().amax(1) ** 2
    budget = SpikeBudget(energy, 1e-9)  # no neuron is this quiet after 20 rounds
    result = fit_codes(train, fit, False, spike_cost=unit, spike_budget=budget)
    chosen = score_sites(result.table, train, train)
    assert budget.spent(chosen["spikes"]) < 0.9 * budget.spent(start["spikes"])
    assert result.prices[-1] == max(result.prices[:-1])  # the highest price the ascent tried


def test_price_mode_warns_and_says_so_when_training_misses_the_budget(calibrated):
    fit = FitSettings("mgpc", 6, 2, FAST, code="signed-digit")
    probe = EnergyBudget(100.0, context=LENGTH)
    energy = _site_energy(calibrated, probe)
    steps = torch.full((len(calibrated.sites),), 6)
    spike_free = energy.ratio(torch.zeros(len(calibrated.sites), dtype=torch.float64), steps)
    budget = EnergyBudget(spike_free * 1.001, context=LENGTH)  # nearly every spike must go
    with pytest.warns(UserWarning, match="was missed: the trained neurons predict"):
        spiking = fit_spiking(calibrated, fit, False, budget_strategy(budget))
    record = spiking.report["energy_budget"]
    assert record["reachable"] and not record["met"]
    assert record["predicted_ratio"] > budget.ratio * 1.01


def test_price_mode_keeps_T_and_meets_the_budget(calibrated):
    train = TrainConfig(rounds=25, search_steps=2, search_samples=64)  # rounds for μ to climb
    fit = FitSettings("mgpc", 6, 2, train, code="signed-digit")
    plain = fit_spiking(
        calibrated, fit, False, budget_strategy(EnergyBudget(100.0, context=LENGTH))
    )
    ratio = plain.report["energy_budget"]["predicted_ratio"] * 0.9
    spiking = fit_spiking(
        calibrated, fit, False, budget_strategy(EnergyBudget(ratio, context=LENGTH))
    )
    record = spiking.report["energy_budget"]
    assert (spiking.table.steps == 6).all() and record["steps_histogram"] == {
        "6": len(spiking.sites)
    }
    assert record["mode"] == "price" and record["reachable"] and record["met"]
    assert record["predicted_ratio"] <= ratio * 1.05
    assert record["price_per_pj"] > plain.report["energy_budget"]["price_per_pj"]


def test_measured_sensitivity_corrects_each_kind_by_the_loss_it_adds(calibrated):
    """The price mode's default measures, per site kind, the NLL its neurons add on unsampled
    calibration text against ½·F·MSE, and trains again with F scaled by that ratio within
    SENSITIVITY_FACTORS; --budget-sensitivity fisher trains once on F alone."""
    fit = FitSettings("mgpc", 6, 2, FAST, code="signed-digit")
    low, high = SENSITIVITY_FACTORS
    first = fit_spiking(
        calibrated,
        fit,
        False,
        budget_strategy(EnergyBudget(0.9, context=LENGTH, sensitivity="fisher")),
    )
    assert first.report["energy_budget"]["sensitivity"] == {"source": "fisher"}
    fisher = calibrated.sensitivity(False).fisher
    factors, record = measured_sensitivity(calibrated, first, fisher, progress=False)
    kinds = {site_kind(s) for s in calibrated.sites}
    assert record["source"] == "measured" and set(record["kinds"]) == kinds
    for kind, row in record["kinds"].items():
        index = [i for i, s in enumerate(calibrated.sites) if site_kind(s) == kind]
        ratio = row["measured"] / row["predicted"]
        assert row["factor"] == pytest.approx(min(max(ratio, low), high))
        assert (factors[index] == row["factor"]).all()
    assert any(row["measured"] != 0 for row in record["kinds"].values())
    measured = fit_spiking(
        calibrated, fit, False, budget_strategy(EnergyBudget(0.9, context=LENGTH))
    )
    again = measured.report["energy_budget"]["sensitivity"]
    for kind, row in record["kinds"].items():  # measured on the same first training
        assert again["kinds"][kind] == pytest.approx(row)
    assert measured.report["seconds"]["training"] > first.report["seconds"]["training"]


def test_budget_sensitivity_is_checked():
    assert EnergyBudget(0.8).measures_sensitivity
    assert not EnergyBudget(0.8, sensitivity="fisher").measures_sensitivity
    assert not EnergyBudget(0.8, mode="knapsack").measures_sensitivity
    with pytest.raises(PhasecodeError, match="needs --budget-mode price"):
        EnergyBudget(0.8, mode="knapsack", sensitivity="measured")
    with pytest.raises(PhasecodeError, match="unknown budget sensitivity"):
        EnergyBudget(0.8, sensitivity="guess")
