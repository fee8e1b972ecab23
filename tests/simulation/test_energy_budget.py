"""Energy-driven conversion: signed-digit neurons and per-site T in the simulator, the energy
estimate against the simulator's counts, the knapsack and the energy-aware training term."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_calibrated

from phasecode.settings import BUDGET_LR_THRESHOLD, BUDGET_ROUNDS, EnergyBudget, FitSettings
from phasecode.simulation.budget import SiteOptions, budget_plan, choose_steps, fit_under_budget
from phasecode.simulation.counting import Counter
from phasecode.simulation.energy import PRESETS, energy
from phasecode.simulation.estimate import SiteEnergy, site_energy
from phasecode.simulation.network import SpikingSimulator
from phasecode.training.alternating import TrainConfig
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
    spiking = fit_under_budget(calibrated, fit, EnergyBudget(middle, 2, LENGTH), False)
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


def test_budget_training_stays_near_the_planned_neurons_unless_the_user_chose():
    budget = EnergyBudget(0.85)
    gentle = budget.training(TrainConfig())
    assert (gentle.lr_threshold, gentle.rounds) == (BUDGET_LR_THRESHOLD, BUDGET_ROUNDS)
    assert gentle.batch_samples == TrainConfig().batch_samples  # only η1 and N change
    chosen = TrainConfig(lr_threshold=0.01)
    assert budget.training(chosen) is chosen
    chosen = TrainConfig(rounds=7)
    assert budget.training(chosen) is chosen
