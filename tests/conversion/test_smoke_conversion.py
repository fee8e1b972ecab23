"""The real default model (SmolLM2-135M) converted end to end with few samples."""

from __future__ import annotations

import math

import pytest

from phasecode.conversion.convert import convert
from phasecode.evaluation.perplexity import token_windows
from phasecode.inference.nll import perplexity
from phasecode.models.loading import load_model
from phasecode.settings import FitSettings, SamplingSettings, TrainConfig

pytestmark = pytest.mark.smoke

TEXT = " ".join(["The spiking network adds up its spikes over time."] * 40)


def test_default_model_converts_and_scores():
    model, tokenizer = load_model()
    windows = token_windows(tokenizer, TEXT, 64, limit=2)
    ann = perplexity(model, windows, progress=False).ppl
    fit = FitSettings("mgpc", 8, 2, TrainConfig(rounds=2, search_steps=2))
    spiking = convert(
        model, tokenizer, fit, SamplingSettings(samples=64, sequences=2, seq_len=64), progress=False
    )
    assert len(spiking.sites) == 10 * model.config.num_hidden_layers + 1
    choice = spiking.report["prefix_choice"]
    assert spiking.spec.prefix_tokens and list(spiking.spec.prefix_tokens) == choice["chosen"]
    chosen = [c for c in choice["candidates"] if c["token_ids"] == choice["chosen"]]
    assert chosen[0]["accepted"] and chosen[0]["peak"] < choice["plain"]["peak"] / 10
    with spiking.analog():
        analog = perplexity(model, windows, spiking.prefix, progress=False).ppl
    with spiking.coded():
        snn = perplexity(model, windows, spiking.prefix, progress=False).ppl
    assert math.isfinite(snn) and snn != analog
    assert abs(analog / ann - 1) < 0.5  # the prefix changes the context, not the model
