"""Block-wise reconstruction: each layer's neurons tuned on the layer's output."""

from __future__ import annotations

import pytest
import torch
from architectures import ARCHITECTURES, tiny_architecture
from helpers import randomize_weights, tiny_calibrated, write_calibration

import phasecode as pc
from phasecode.conversion.config import ConfigError
from phasecode.conversion.convert import fit_spiking
from phasecode.conversion.reconstruct import ReconstructSettings, reconstruct_blocks
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
    with pytest.raises(ConfigError, match="energy budget"):
        pc.ConversionConfig(reconstruct="block", energy_budget=0.8)


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
