from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from phasecode.errors import PhasecodeError
from phasecode.evaluation.perplexity import perplexity, token_windows
from phasecode.evaluation.prefix import build_prefix, find_outlier_tokens, prefix_token_ids

PREFIX = [0, 5, 7]


def _windows(n: int = 2, seq_len: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 128, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def _with_prefix(windows: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.tensor(PREFIX).expand(len(windows), -1), windows], dim=1)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_cached_prefix_equals_a_plain_forward_on_prefix_and_window(tiny_model, arch):
    model = tiny_model(arch).double()
    windows = _windows()
    prefix = build_prefix(model, PREFIX)
    assert len(prefix) == 3 and prefix.seconds > 0
    with torch.no_grad():
        cached = model(input_ids=windows, cache=prefix.cache_for(2)).logits
        plain = model(input_ids=_with_prefix(windows)).logits[:, len(PREFIX) :]
    assert (cached - plain).abs().max() <= 1e-10


def test_prefixed_perplexity_scores_the_window_tokens(tiny_model):
    model = tiny_model("llama").double()
    windows = _windows(3)
    prefix = build_prefix(model, PREFIX)
    stored = [(k.clone(), v.clone()) for k, v in prefix.keys_values]
    with torch.no_grad():
        logits = model(input_ids=_with_prefix(windows)).logits[:, len(PREFIX) : -1]
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, windows[:, 1:, None])
    expected = -log_probs.squeeze(-1).sum(dim=1)
    for batch_size in (1, 2):
        result = perplexity(model, windows, prefix, batch_size=batch_size, progress=False)
        torch.testing.assert_close(result.nll, expected, rtol=0, atol=1e-10)
    for (k, v), (k0, v0) in zip(prefix.keys_values, stored, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_the_prefix_cache_is_fresh_for_every_batch(tiny_model):
    model = tiny_model("mistral")
    twice = _windows(1).repeat(2, 1)
    result = perplexity(model, twice, build_prefix(model, PREFIX), progress=False)
    assert result.nll[0] == result.nll[1]


def test_prefix_counts_against_the_position_limit(tiny_model):
    model = tiny_model("llama")
    windows = torch.ones(1, model.config.max_position_embeddings - 1, dtype=torch.long)
    with pytest.raises(PhasecodeError, match="prefix 3 exceeds"):
        perplexity(model, windows, build_prefix(model, PREFIX), progress=False)


def test_empty_prefix_is_refused(tiny_model):
    with pytest.raises(PhasecodeError, match="at least one token"):
        build_prefix(tiny_model("llama"), [])


def test_prefix_token_ids_put_bos_first_without_repeats(tiny_tokenizer):
    assert prefix_token_ids(tiny_tokenizer, [12, 0, 9, 12]) == [0, 12, 9]
    assert prefix_token_ids(SimpleNamespace(bos_token_id=None), [12, 9, 12]) == [12, 9]


# ---------------------------------------------------------------- outlier tokens


def _planted(tiny_model, token: int) -> torch.nn.Module:
    """A tiny llama whose layer-0 MLP gives `token` a massive down_proj input.

    Scaling the token's embedding row alone does nothing: RMSNorm undoes the scale. So, as in
    real LLMs, one residual channel (0) carries the token, ×1000 above the others, and one MLP
    channel (0) reads just that residual channel; no other token or attention writes to it.
    """
    model = tiny_model("llama")
    model.resize_token_embeddings(258, mean_resizing=False)  # the byte tokenizer's ids
    layer = model.model.layers[0]
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:, 0] = 0
        embed[token] = 0
        embed[token, 0] = 1000 * embed.abs().max()
        layer.self_attn.o_proj.weight[0] = 0
        for linear in (layer.mlp.gate_proj, layer.mlp.up_proj):
            linear.weight[0] = 0
            linear.weight[0, 0] = 1
    return model


def test_find_outlier_tokens_finds_a_planted_token(tiny_model, tiny_tokenizer):
    newline = tiny_tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    model = _planted(tiny_model, newline)
    windows = token_windows(tiny_tokenizer, "the quick brown fox jumps.\n" * 9, seq_len=40)
    search = find_outlier_tokens(model, tiny_tokenizer, windows, progress=False, batch_size=3)
    assert search.token_ids == [newline]
    (found,) = search.tokens
    assert found.text == "\n" and found.count == (windows[:, 1:] == newline).sum() > 0
    assert found.max_abs > 1000 * search.median  # it does blow up the down_proj input
    assert search.threshold == pytest.approx(20 * search.median)


def test_find_outlier_tokens_skips_the_first_positions(tiny_model, tiny_tokenizer):
    newline = tiny_tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    model = _planted(tiny_model, newline)
    windows = token_windows(tiny_tokenizer, "\nthe quick brown fox." * 4, seq_len=21)
    assert (windows[:, 0] == newline).all() and not (windows[:, 1:] == newline).any()
    skipped = find_outlier_tokens(model, tiny_tokenizer, windows, progress=False)
    counted = find_outlier_tokens(model, tiny_tokenizer, windows, skip_positions=0, progress=False)
    assert skipped.token_ids == [] and counted.token_ids == [newline]


def test_find_outlier_tokens_ranks_by_count_and_caps_at_top(tiny_model, tiny_tokenizer):
    model = tiny_model("llama")
    model.resize_token_embeddings(258, mean_resizing=False)
    windows = token_windows(tiny_tokenizer, "abcdefgh" * 8, seq_len=16)
    search = find_outlier_tokens(model, tiny_tokenizer, windows, top=2, factor=1.0, progress=False)
    counts = [t.count for t in search.tokens]
    assert len(search.token_ids) == 2 and counts == sorted(counts, reverse=True)
    assert search.token_ids == [t.token_id for t in search.tokens[:2]]


def test_find_outlier_tokens_rejects_bad_input(tiny_model, tiny_tokenizer):
    model = tiny_model("llama")
    with pytest.raises(PhasecodeError, match="skip_positions"):
        find_outlier_tokens(model, tiny_tokenizer, _windows(1, 4), skip_positions=4)
    with pytest.raises(PhasecodeError, match="top"):
        find_outlier_tokens(model, tiny_tokenizer, _windows(1, 4), top=0)
