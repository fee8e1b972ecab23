"""The remembered prefix choice: read back for the same model and windows, measured again
for anything the measurement depends on, and never trusted when unreadable."""

from __future__ import annotations

import pytest
import torch

from phasecode.cache.root import kind_dir
from phasecode.evaluation.perplexity import token_windows
from phasecode.inference import prefix_cache, prefix_choice
from phasecode.inference.prefix_cache import choose_prefix_cached


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path))


def _counting(monkeypatch) -> list:
    """Count the measurements (forwards) the choice makes."""
    calls = []
    measure = prefix_choice.measure_prefix

    def counted(*args):
        calls.append(args[2])
        return measure(*args)

    monkeypatch.setattr(prefix_choice, "measure_prefix", counted)
    return calls


def _model(tiny_model) -> torch.nn.Module:
    model = tiny_model("llama")
    model.resize_token_embeddings(258, mean_resizing=False)  # the byte tokenizer's ids
    return model


def _windows(tokenizer) -> torch.Tensor:
    return token_windows(tokenizer, "the quick brown fox jumps.\n" * 9, seq_len=40)


def test_a_second_choice_is_read_back_without_a_forward(monkeypatch, tiny_model, tiny_tokenizer):
    model, windows = _model(tiny_model), _windows(tiny_tokenizer)
    calls = _counting(monkeypatch)
    first = choose_prefix_cached(model, tiny_tokenizer, windows, progress=False)
    measured = len(calls)
    assert measured > 1 and first.source == "measured"
    second = choose_prefix_cached(model, tiny_tokenizer, windows, progress=False)
    assert len(calls) == measured and second.source == "cache"
    assert second.token_ids == first.token_ids and second.reason == first.reason
    assert second.trials == first.trials and second.outliers == first.outliers
    assert torch.equal(second.plain_peaks, first.plain_peaks)
    assert second.report() == first.report() | {"source": "cache"}


def test_other_weights_windows_or_rules_are_measured_again(monkeypatch, tiny_model, tiny_tokenizer):
    model, windows = _model(tiny_model), _windows(tiny_tokenizer)
    key = prefix_cache.choice_inputs(model, tiny_tokenizer, windows)
    other_windows = windows.roll(1, dims=1)
    assert prefix_cache.choice_inputs(model, tiny_tokenizer, other_windows) != key
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    assert prefix_cache.choice_inputs(model, tiny_tokenizer, windows) != key
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.div_(1.5)
    monkeypatch.setattr(prefix_choice, "LOSS_BUDGET", 0.01)
    assert prefix_cache.choice_inputs(model, tiny_tokenizer, windows) != key
    assert prefix_cache.choice_inputs(model.double(), tiny_tokenizer, windows) != key


def test_an_unreadable_entry_is_measured_and_rewritten(monkeypatch, tiny_model, tiny_tokenizer):
    model, windows = _model(tiny_model), _windows(tiny_tokenizer)
    choose_prefix_cached(model, tiny_tokenizer, windows, progress=False)
    (entry,) = kind_dir(prefix_cache.CHOICES.kind).glob("*.json")
    entry.write_text('{"format": 2, "value": {"token_ids": [')  # a crash mid-write, by another tool
    calls = _counting(monkeypatch)
    again = choose_prefix_cached(model, tiny_tokenizer, windows, progress=False)
    assert calls and again.source == "measured"
    assert choose_prefix_cached(model, tiny_tokenizer, windows, progress=False).source == "cache"


def test_the_cache_can_be_switched_off(monkeypatch, tiny_model, tiny_tokenizer):
    monkeypatch.setenv("PHASECODE_PREFIX_CACHE", "0")
    model, windows = _model(tiny_model), _windows(tiny_tokenizer)
    for _ in range(2):
        choice = choose_prefix_cached(model, tiny_tokenizer, windows, progress=False)
        assert choice.source == "measured"
    assert not kind_dir(prefix_cache.CHOICES.kind).exists()
