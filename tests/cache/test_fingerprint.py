"""The model fingerprint covers the whole content (every weight, the whole config), is the same
however the model was loaded, and is hashed once per set of files."""

from __future__ import annotations

import pytest
import torch
from helpers import save_tiny_model, tiny_llama
from transformers import AutoModelForCausalLM

from phasecode.cache import fingerprint
from phasecode.cache.fingerprint import matches, model_fingerprint, sampled_fingerprint
from phasecode.models.loading import load_model


@pytest.fixture
def saved(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path / "cache"))
    return save_tiny_model(tmp_path / "model", tiny_tokenizer)


def test_the_same_weights_give_the_same_fingerprint_however_loaded(saved):
    ours, _ = load_model(str(saved))
    theirs = AutoModelForCausalLM.from_pretrained(saved).eval()
    assert model_fingerprint(ours) == model_fingerprint(theirs) == model_fingerprint(tiny_llama())


def test_a_change_the_sample_misses_is_seen():
    """One element of the embedding that the old strided sample never read."""
    model, other = tiny_llama(), tiny_llama()
    weight = other.model.embed_tokens.weight
    sampled = set(range(0, weight.numel(), max(1, weight.numel() // fingerprint.SAMPLES)))
    unsampled = next(i for i in range(weight.numel()) if i not in sampled)
    with torch.no_grad():
        weight.view(-1)[unsampled] += 1.0
    assert sampled_fingerprint(model) == sampled_fingerprint(other)  # what artifacts had
    assert model_fingerprint(model) != model_fingerprint(other)


def test_a_config_only_variant_is_another_model():
    model, other = tiny_llama(), tiny_llama()
    other.config.rms_norm_eps = 1e-3  # same weights, another computation
    assert model_fingerprint(model) != model_fingerprint(other)


def test_files_are_hashed_once_and_a_model_changed_in_memory_again(saved, monkeypatch):
    first, _ = load_model(str(saved))
    expected = model_fingerprint(first)
    monkeypatch.setattr(fingerprint, "RACY_NS", -(10**18))  # the files are not new any more
    load_model(str(saved))  # remembered now
    monkeypatch.setattr(fingerprint, "content_fingerprint", lambda *a: pytest.fail("hashed again"))
    again, _ = load_model(str(saved))
    assert model_fingerprint(again) == expected
    monkeypatch.undo()
    with torch.no_grad():
        again.model.norm.weight.mul_(2.0)
    assert model_fingerprint(again) != expected


def test_legacy_fingerprints_are_checked_as_they_were_made():
    model = tiny_llama()
    assert matches(model, sampled_fingerprint(model))[0]
    assert matches(model, model_fingerprint(model))[0]
    assert not matches(model, "0" * 16)[0] and not matches(model, "0" * 32)[0]
