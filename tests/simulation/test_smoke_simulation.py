"""The real default model (SmolLM2-135M) run as spikes: simulator parity and generation."""

from __future__ import annotations

import pytest
import torch

from phasecode.api.simulate import fast_logits, sample_tokens, simulate
from phasecode.cache.fingerprint import model_fingerprint
from phasecode.conversion.convert import convert
from phasecode.conversion.store import load_spiking, save_spiking
from phasecode.jobs.generate import encode_prompt, greedy_fast, greedy_spiking
from phasecode.models.loading import load_model
from phasecode.models.resolve import DEFAULT_MODEL
from phasecode.settings import FitSettings, SamplingSettings, TrainConfig

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def float64_spiking(tmp_path_factory):
    """A quickly converted SmolLM2-135M (T=8, 2 grains), reloaded in float64."""
    model, tokenizer = load_model()
    base = {"name": DEFAULT_MODEL, "fingerprint": model_fingerprint(model)}
    fit = FitSettings("mgpc", 8, 2, TrainConfig(rounds=2, search_steps=2))
    sampling = SamplingSettings(samples=64, sequences=2, seq_len=64)
    spiking = convert(model, tokenizer, fit, sampling, progress=False)
    directory = tmp_path_factory.mktemp("smoke_simulation") / "artifact"
    save_spiking(directory, spiking, base)
    return load_spiking(directory, float64=True)


def test_simulator_equals_fast_path_on_the_default_model(float64_spiking):
    tokens = sample_tokens(float64_spiking, 64)
    simulated, _ = simulate(float64_spiking, tokens)
    fast = fast_logits(float64_spiking, tokens)
    assert simulated.dtype == torch.float64
    assert ((simulated - fast).abs().max() / fast.abs().max()).item() <= 1e-9
    assert torch.equal(simulated.argmax(-1), fast.argmax(-1))


def test_greedy_generation_is_identical_on_the_default_model(float64_spiking):
    prompt = encode_prompt(float64_spiking, "The capital of France is", 4)
    fast = greedy_fast(float64_spiking, prompt, 4)
    assert greedy_spiking(float64_spiking, prompt, 4) == fast
    assert len(fast) == 4  # no early end-of-text for this prompt
