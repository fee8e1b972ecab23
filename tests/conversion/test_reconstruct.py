"""Block-wise reconstruction: each layer's neurons tuned on the layer's output."""

from __future__ import annotations

import pytest
import torch
from architectures import ARCHITECTURES, tiny_architecture
from helpers import randomize_weights, tiny_calibrated, write_calibration

import phasecode as pc
import phasecode.conversion.reconstruct as reconstruct_module
from phasecode.conversion.config import ConfigError
from phasecode.conversion.convert import fit_spiking
from phasecode.conversion.reconstruct import (
    OutputSettings,
    ReconstructSettings,
    reconstruct_blocks,
)
from phasecode.models.precision import to_float64
from phasecode.settings import FitSettings, TrainConfig
from phasecode.simulation.network import SpikingSimulator

SETTINGS = ReconstructSettings(windows=4, steps=3, batch=2, lr=0.01)


@pytest.fixture(scope="module")
def reconstructed(tmp_path_factory, tiny_tokenizer):
    calibrated = tiny_calibrated(tmp_path_factory.mktemp("rec"), tiny_tokenizer)
    fit = FitSettings("mgpc", 4, 2, TrainConfig(rounds=2, search_steps=2, search_samples=64))
    spiking = fit_spiking(calibrated, fit, progress=False)
    fitted = spiking.table
    report = reconstruct_blocks(spiking, calibrated.windows, SETTINGS, progress=False)
    return spiking, fitted, report


def test_each_layer_ends_no_worse_on_its_output(reconstructed):
    spiking, fitted, report = reconstructed
    layers = report["layers"]
    assert [row["layer"] for row in layers] == [0, 1]
    assert all(row["loss_after"] <= row["loss_before"] for row in layers)
    assert any(row["loss_after"] < row["loss_before"] for row in layers)
    changed = ~torch.isclose(spiking.table.threshold, fitted.threshold).all(1)
    assert changed.any()  # the tuned layers' thresholds moved
    assert torch.equal(spiking.table.threshold[-1], fitted.threshold[-1])  # lm_head: untouched
    assert spiking.table.phase is not None  # still phase-coded: d = scale·B^-t


def test_the_spiking_network_still_equals_the_fast_path(reconstructed):
    spiking, _, _ = reconstructed
    tokens = torch.randint(2, 258, (1, 12), generator=torch.Generator().manual_seed(3))
    with spiking.coded():
        fast = spiking.logits(tokens)
    simulated = SpikingSimulator(spiking).forward(tokens)
    assert ((simulated - fast).abs().max() / fast.abs().max()).item() <= 1e-9


def test_reconstruct_is_a_config_choice():
    assert pc.ConversionConfig(reconstruct="block").reconstruct == "block"
    with pytest.raises(ConfigError, match="reconstruct must be one of"):
        pc.ConversionConfig(reconstruct="layer")
    with pytest.raises(ConfigError, match="needs mgpc"):
        pc.ConversionConfig(reconstruct="block", method="las")
    assert pc.ConversionConfig(reconstruct="block", energy_budget=0.8).reconstruct == "block"
    with pytest.raises(ConfigError, match="needs budget_mode 'price'"):
        pc.ConversionConfig(reconstruct="block", energy_budget=0.8, budget_mode="knapsack")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_reconstructs(name, tmp_path, tiny_tokenizer):
    """The layer is run through its own forward (Gemma's per-type RoPE and masks, OLMo 2's
    post-norms, Phi-3's fused projections), with the prefix in the cache."""
    model = randomize_weights(tiny_architecture(name), seed=1)
    config = pc.ConversionConfig(
        samples=64, sequences=4, seq_len=32, rounds=2, prefix=[0], reconstruct="block"
    )
    calibration = write_calibration(tmp_path / "calib.jsonl")
    snn = pc.convert(model, tiny_tokenizer, config, calibration=calibration, progress=False)
    layers = snn.spiking.report["reconstruction"]["layers"]
    assert len(layers) == model.config.num_hidden_layers
    assert all(row["loss_after"] <= row["loss_before"] for row in layers)


@pytest.mark.parametrize("how", ["block", "output"])
def test_under_an_energy_budget_tuning_spends_no_more_than_the_fitted_neurons(
    how, tmp_path, tiny_tokenizer
):
    """The price mode's neurons tuned with the spike energy held to what the budget leaves
    (the fitted neurons' times the headroom their prediction left under it) on the
    calibration tokens, per layer or of the whole model; the budget's prediction is made
    again."""
    model = randomize_weights(tiny_architecture("llama3_rope"), seed=1)
    config = pc.ConversionConfig(
        samples=64,
        sequences=4,
        seq_len=32,
        rounds=2,
        prefix=[0],
        code="signed-digit",
        energy_budget=2.5,
        budget_sensitivity="fisher",
        reconstruct=how,
    )
    calibration = write_calibration(tmp_path / "calib.jsonl")
    snn = pc.convert(model, tiny_tokenizer, config, calibration=calibration, progress=False)
    report = snn.spiking.report
    record = report["energy_budget"]
    assert record["reachable"] and record["met"]
    tuned = report["reconstruction"]
    headroom = tuned["headroom"]
    # the fitted neurons predict under the budget: the tuning may spend the rest
    assert record["predicted_ratio_fitted"] < record["ratio"] and headroom > 1.0
    if how == "output":
        assert tuned["kept"] and tuned["kl_tuned"] < tuned["kl_before"]
        assert tuned["energy_tuned"] <= headroom
        assert record["predicted_ratio"] != record["predicted_ratio_fitted"]
        return
    layers = tuned["layers"]
    assert len(layers) == model.config.num_hidden_layers
    for row in layers:
        assert row["loss_after"] <= row["loss_before"]
        kept = row["loss_after"] < row["loss_before"]
        assert not kept or row["energy_tuned"] <= headroom
    assert any(row["loss_after"] < row["loss_before"] for row in layers)
    # the report's site scores are the tuned neurons': the prediction moved with them
    assert record["predicted_ratio"] != record["predicted_ratio_fitted"]


def test_output_tuning_falls_back_to_the_latest_pass_within_the_hold(
    monkeypatch, tmp_path, tiny_tokenizer
):
    """Where the last passes' neurons overspend the hold (the hinge lets a pass overspend
    a little), the latest pass whose neurons do not is kept, not the fitted neurons."""
    calls = []

    def kept(self, spends):  # the last two passes overspend
        calls.append(spends)
        return len(calls) > 2

    monkeypatch.setattr(reconstruct_module._EnergyHold, "kept", kept)
    model = randomize_weights(tiny_architecture("llama3_rope"), seed=1)
    config = pc.ConversionConfig(
        samples=64, sequences=4, seq_len=32, rounds=2, prefix=[0], reconstruct="output"
    )
    calibration = write_calibration(tmp_path / "calib.jsonl")
    snn = pc.convert(model, tiny_tokenizer, config, calibration=calibration, progress=False)
    tuned = snn.spiking.report["reconstruction"]
    assert tuned["kept"] and tuned["kl_tuned"] < tuned["kl_before"]
    assert tuned["passes_kept"] == OutputSettings().passes - 2
    assert len(calls) == 4  # passes 5, 4, 3, then the final check


def test_output_tuning_lowers_the_kl_and_keeps_the_network_exact(tmp_path, tiny_tokenizer):
    """--reconstruct output: every neuron tuned on KL(prepared ANN ‖ SNN); the tuned table is
    still a phase code the spike-level network runs exactly."""
    model = to_float64(randomize_weights(tiny_architecture("qwen3"), seed=1))
    config = pc.ConversionConfig(
        samples=64, sequences=4, seq_len=32, rounds=2, prefix=[0], reconstruct="output"
    )
    calibration = write_calibration(tmp_path / "calib.jsonl")
    snn = pc.convert(model, tiny_tokenizer, config, calibration=calibration, progress=False)
    spiking = snn.spiking
    tuned = spiking.report["reconstruction"]
    assert tuned["kept"] and tuned["kl_tuned"] < tuned["kl_before"]
    assert tuned["passes_kept"] == OutputSettings().passes
    assert "energy_tuned" not in tuned  # no budget: spikes are free
    assert tuned["steps"] == OutputSettings().passes * 2  # 4 windows in batches of 2
    tokens = torch.randint(2, 258, (1, 12), generator=torch.Generator().manual_seed(3))
    with spiking.coded():
        fast = spiking.logits(tokens)
    simulated = SpikingSimulator(spiking).forward(tokens)
    assert ((simulated - fast).abs().max() / fast.abs().max()).item() <= 1e-9
