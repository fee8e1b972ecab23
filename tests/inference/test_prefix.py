from __future__ import annotations

import pytest
import torch

from phasecode.errors import PhasecodeError
from phasecode.evaluation.perplexity import token_windows
from phasecode.inference import prefix_choice
from phasecode.inference.nll import perplexity
from phasecode.inference.prefix import build_prefix
from phasecode.inference.prefix_choice import (
    LOSS_BUDGET,
    SELECTION_WINDOWS,
    PrefixRequest,
    choose_prefix,
)

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


def test_the_plain_models_mid_text_outliers_become_candidates(tiny_model, tiny_tokenizer):
    newline = tiny_tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    model = _planted(tiny_model, newline)
    windows = token_windows(tiny_tokenizer, "the quick brown fox jumps.\n" * 9, seq_len=40)
    choice = choose_prefix(model, tiny_tokenizer, windows, progress=False)
    (found,) = choice.outliers
    assert found.token_id == newline and found.text == "\n"
    assert found.count == (windows[:SELECTION_WINDOWS, 1:] == newline).sum() > 0
    assert (newline,) in [t.token_ids for t in choice.trials]
    report = choice.report()
    assert report["plain"]["loss_ratio"] == 1.0 and report["reason"] == choice.reason
    assert len(report["candidates"]) == len(choice.trials)


def _hurting(tiny_model, hurt: int) -> torch.nn.Module:
    """A tiny llama in which token ``hurt`` in front makes every later token attend to it in
    layer 0 and read back a huge value: as a prefix it wrecks the loss."""
    model = tiny_model("llama")
    model.resize_token_embeddings(258, mean_resizing=False)
    attention = model.model.layers[0].self_attn
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[:, :2] = 0
        embed[:, 1] = embed.abs().max()  # a constant channel every query reads
        embed[hurt] = 0
        embed[hurt, 0] = 1000 * embed.abs().max()  # only the hurting token writes channel 0
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
            linear.weight[:, :2] = 0
        attention.q_proj.weight[:, 1] = 1.0
        attention.k_proj.weight[:, 0] = 50.0
        attention.v_proj.weight[:, 0] = 50.0
    return model


def test_a_prefix_that_hurts_the_ann_is_rejected(tiny_model, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    model = _hurting(tiny_model, eos)
    windows = token_windows(tiny_tokenizer, "the quick brown fox jumps.\n" * 9, seq_len=40)
    choice = choose_prefix(model, tiny_tokenizer, windows, progress=False)
    (hurting,) = [t for t in choice.trials if t.token_ids == (eos,)]
    assert hurting.loss > (1 + LOSS_BUDGET) * choice.plain.loss and not hurting.accepted
    assert eos not in choice.token_ids
    chosen = [t for t in choice.trials if t.token_ids == choice.token_ids]
    assert not choice.token_ids or chosen[0].accepted


def test_the_lowest_peak_within_budget_wins_and_grows_while_it_pays(monkeypatch, tiny_tokenizer):
    """The selection rule itself, on scripted measurements: BOS has the lowest peak but costs
    5 % loss; "\n" and " " tie on the next peak and "\n" has the lower loss; "." is a
    mid-text outlier of the plain model and, after "\n", cuts the peak by half again."""
    newline, dot, space = (tiny_tokenizer.encode(t, add_special_tokens=False)[0] for t in "\n. ")
    bos = tiny_tokenizer.bos_token_id
    scripted = {(bos,): (2.1, 1.0), (newline,): (2.001, 5.0), (space,): (2.004, 5.2)}
    scripted |= {(newline, dot): (2.005, 2.0), (dot,): (1.9, 50.0)}
    windows = torch.randint(2, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    windows[:, 4] = dot

    def measure(model, windows, ids):
        if not ids:  # the plain model: a sink at 0, and "." an outlier wherever it is
            peaks = torch.ones(windows.shape)
            peaks[:, 0], peaks[windows == dot] = 100.0, 60.0
            return 2.0, peaks[None]  # one layer
        loss, peak = scripted.get(tuple(ids), (2.0, 80.0))
        return loss, torch.full((1, *windows.shape), peak)

    monkeypatch.setattr(prefix_choice, "measure_prefix", measure)
    choice = choose_prefix(None, tiny_tokenizer, windows, progress=False)
    assert [t.token_id for t in choice.outliers] == [dot]
    assert choice.token_ids == (newline, dot)
    rejected = [t for t in choice.trials if not t.accepted]
    assert [t.token_ids for t in rejected] == [(bos,)]


def test_no_prefix_when_every_candidate_costs_loss(monkeypatch, tiny_tokenizer):
    monkeypatch.setattr(
        prefix_choice,
        "measure_prefix",
        lambda model, windows, ids: (2.0 if not ids else 3.0, torch.ones(1, *windows.shape)),
    )
    choice = choose_prefix(None, tiny_tokenizer, torch.randint(2, 200, (2, 10)), progress=False)
    assert choice.token_ids == () and "budget" in choice.reason


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (PrefixRequest("text", text=""), "tokenizes to nothing"),
        (PrefixRequest("ids", ids=(5000,)), "prefix ids"),
    ],
)
def test_given_prefixes_are_checked(tiny_tokenizer, request_, message):
    with pytest.raises(PhasecodeError, match=message):
        request_.given_ids(tiny_tokenizer, 258)


def test_a_given_text_prefix_is_tokenized(tiny_tokenizer):
    ids = PrefixRequest("text", text="\n").given_ids(tiny_tokenizer, 258)
    assert ids == tuple(tiny_tokenizer.encode("\n", add_special_tokens=False))
