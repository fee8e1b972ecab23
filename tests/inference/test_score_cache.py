"""Remembered ANN scores: read back bit for bit for the same model, windows and forward;
measured again when anything they depend on differs or the entry is unreadable."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_calibrated

from phasecode.cache.digests import tensor_digest
from phasecode.cache.root import kind_dir
from phasecode.conversion.convert import fit_spiking
from phasecode.inference import score_cache
from phasecode.inference.prefix import build_prefix
from phasecode.inference.score_cache import PLAIN, SCORES, perplexity_cached, score_inputs
from phasecode.settings import FitSettings, TrainConfig


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PHASECODE_SCORE_CACHE", "1")


def _counting(monkeypatch) -> list:
    calls = []
    measure = score_cache.perplexity

    def counted(*args):
        calls.append(args)
        return measure(*args)

    monkeypatch.setattr(score_cache, "perplexity", counted)
    return calls


def _windows(seed: int = 0) -> torch.Tensor:
    return torch.randint(2, 128, (3, 24), generator=torch.Generator().manual_seed(seed))


def test_scores_are_read_back_bit_for_bit_without_a_forward(monkeypatch, tiny_model):
    model, windows = tiny_model("llama"), _windows()
    calls = _counting(monkeypatch)
    first = perplexity_cached(model, windows, None, 2, False, PLAIN)
    second = perplexity_cached(model, windows, None, 2, False, PLAIN)
    assert len(calls) == 1
    assert (first.source, second.source) == ("measured", "cache")
    assert torch.equal(first.nll, second.nll) and torch.equal(first.tokens, second.tokens)
    assert second.seconds == first.seconds and second.ppl == first.ppl


def test_anything_the_scores_depend_on_gives_another_entry(tiny_model):
    model, windows = tiny_model("llama"), _windows()
    key = score_inputs(model, windows, None, 2, PLAIN)
    prefix = build_prefix(model, [0])
    assert score_inputs(model, _windows(1), None, 2, PLAIN) != key
    assert score_inputs(model, windows[:2], None, 2, PLAIN) != key
    assert score_inputs(model, windows, prefix, 2, PLAIN) != key
    assert score_inputs(model, windows, None, 1, PLAIN) != key
    assert score_inputs(model, windows, None, 2, {"model": "prepared ANN"}) != key
    assert score_inputs(tiny_model("llama", seed=1), windows, None, 2, PLAIN) != key
    assert score_inputs(model.double(), windows, None, 2, PLAIN) != key


def test_an_unreadable_or_wrong_entry_is_measured_and_rewritten(monkeypatch, tiny_model):
    """Torn, edited (a valid-looking number changed: its checksum fails) or another format:
    measured again, never used."""
    model, windows = tiny_model("llama"), _windows()
    first = perplexity_cached(model, windows, None, 2, False, PLAIN)
    entry = SCORES.path(SCORES.inputs(score_inputs(model, windows, None, 2, PLAIN), "cpu"))
    stored = json.loads(entry.read_text())
    assert stored["inputs"]["windows"] == tensor_digest(windows)  # it says what it is for
    edited = json.loads(entry.read_text())
    edited["value"]["nll"][0] += 1.0
    for torn in (
        '{"format": 2, "value": {"nll": [',
        json.dumps(edited),
        json.dumps(stored | {"format": 1}),
        "",
    ):
        entry.write_text(torn)
        again = perplexity_cached(model, windows, None, 2, False, PLAIN)
        assert again.source == "measured" and torch.equal(again.nll, first.nll)
    assert perplexity_cached(model, windows, None, 2, False, PLAIN).source == "cache"


def test_the_cache_can_be_switched_off(monkeypatch, tiny_model):
    monkeypatch.setenv("PHASECODE_SCORE_CACHE", "0")
    model, windows = tiny_model("llama"), _windows()
    for _ in range(2):
        assert perplexity_cached(model, windows, None, 2, False, PLAIN).source == "measured"
    assert not kind_dir(SCORES.kind).exists()


def test_a_prepared_ann_is_told_apart_by_its_rotations(tmp_path, tiny_tokenizer):
    calibrated = tiny_calibrated(tmp_path, tiny_tokenizer)
    fit = FitSettings("mgpc", 4, 2, TrainConfig(rounds=2, search_steps=2, search_samples=64))
    identity = fit_spiking(calibrated, fit, progress=False).analog_identity()
    assert identity["model"] == "prepared ANN" and identity["rotate"] is True
    assert identity["silu_scales"] is None
    key = score_inputs(calibrated.model, _windows(), None, 2, identity)
    other = identity | {"rotation_seed": identity["rotation_seed"] + 1}
    assert score_inputs(calibrated.model, _windows(), None, 2, other) != key
    assert score_inputs(calibrated.model, _windows(), None, 2, PLAIN) != key
