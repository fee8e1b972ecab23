from __future__ import annotations

import math

import pytest
import torch

from phasecode.calibration.text import data_dir, read_texts
from phasecode.errors import PhasecodeError
from phasecode.evaluation.perplexity import C4, CORPORA, WIKITEXT2, load_corpus, token_windows
from phasecode.inference.nll import check_seq_len, perplexity

# ---------------------------------------------------------------- corpora


def test_wikitext2_is_the_gptq_join_of_hf_rows():
    raw = (data_dir() / WIKITEXT2).read_text(encoding="utf-8")
    lines = raw.splitlines(keepends=True)
    assert len(lines) == 4358 and lines[0] == " \n" and lines[1] == " = Robert Boulter = \n"
    # HF yields one row per line, keeping "\n"; whitespace-only lines (" \n") become "".
    rows = ["" if line == " \n" else line for line in lines]
    text = load_corpus("wikitext2")
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is an English")
    assert len(text) == sum(map(len, rows)) + 2 * (len(rows) - 1)
    assert text == "\n\n".join(rows)


def test_wikitext2_valid_is_the_validation_split_joined_the_same_way():
    lines = (data_dir() / CORPORA["wikitext2-valid"]).read_text(encoding="utf-8")
    rows = ["" if line == " \n" else line for line in lines.splitlines(keepends=True)]
    assert len(rows) == 3760
    text = load_corpus("wikitext2-valid")
    assert text == "\n\n".join(rows)
    assert text[:2000] not in load_corpus("wikitext2")  # held out from the test split


def test_c4_joins_the_sample_documents():
    texts = read_texts(data_dir() / C4)
    text = load_corpus("c4")
    assert text.startswith(texts[0] + "\n\n" + texts[1])
    assert len(text) == sum(map(len, texts)) + 2 * (len(texts) - 1)


def test_corpus_from_a_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("plain text\n", encoding="utf-8")
    assert load_corpus(str(path)) == "plain text\n"


def test_missing_or_empty_corpus(tmp_path):
    with pytest.raises(PhasecodeError, match="corpus file not found: .*nope.txt"):
        load_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text(" \n", encoding="utf-8")
    with pytest.raises(PhasecodeError, match="empty.txt"):
        load_corpus(str(tmp_path / "empty.txt"))


# ---------------------------------------------------------------- windows


def test_token_windows_cut_without_special_tokens(tiny_tokenizer):
    text = "abcdefghij" * 10  # one token per byte: 100 tokens
    windows = token_windows(tiny_tokenizer, text, seq_len=16)
    assert windows.shape == (6, 16) and windows.dtype == torch.long
    expected = tiny_tokenizer(text, add_special_tokens=False)["input_ids"][:96]
    assert windows.flatten().tolist() == expected
    assert windows[0, 0] != tiny_tokenizer.bos_token_id
    assert torch.equal(token_windows(tiny_tokenizer, text, 16, limit=2), windows[:2])
    assert len(token_windows(tiny_tokenizer, text, 16, limit=50)) == 6


def test_token_windows_keep_a_bos_the_text_has(tiny_tokenizer):
    windows = token_windows(tiny_tokenizer, "<s>" + "x" * 20, seq_len=8)
    assert windows[0, 0] == tiny_tokenizer.bos_token_id and windows[1, 0] != windows[0, 0]


def test_too_little_text_for_a_window(tiny_tokenizer):
    with pytest.raises(PhasecodeError, match="5 tokens, fewer than one window of 8"):
        token_windows(tiny_tokenizer, "short", seq_len=8)
    with pytest.raises(PhasecodeError, match="seq_len >= 2"):
        token_windows(tiny_tokenizer, "short", seq_len=1)


def test_check_seq_len(tiny_model):
    model = tiny_model("llama")
    limit = model.config.max_position_embeddings
    check_seq_len(model, limit)
    with pytest.raises(PhasecodeError, match=f"seq_len {limit + 1} exceeds the model's {limit}"):
        check_seq_len(model, limit + 1)
    with pytest.raises(PhasecodeError, match=f"seq_len {limit} \\+ prefix 1 exceeds"):
        check_seq_len(model, limit, prefix_len=1)


# ---------------------------------------------------------------- perplexity


def _hand_nll(model, windows: torch.Tensor) -> list[float]:
    """Summed NLL of tokens 1..L-1 of each window, from one plain forward each (float64)."""
    out = []
    for window in windows:
        log_probs = torch.log_softmax(model(window[None]).logits[0, :-1].double(), dim=-1)
        out.append(-log_probs[torch.arange(len(window) - 1), window[1:]].sum().item())
    return out


def test_perplexity_matches_a_hand_computation(tiny_model):
    model = tiny_model("llama").double()
    windows = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _hand_nll(model, windows)
    one = perplexity(model, windows, progress=False)
    two = perplexity(model, windows, batch_size=2, progress=False)
    assert one.nll.dtype == torch.float64 and one.tokens.tolist() == [15, 15, 15]
    torch.testing.assert_close(
        one.nll, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10
    )
    torch.testing.assert_close(two.nll, one.nll, rtol=0, atol=1e-10)
    assert one.ppl == pytest.approx(math.exp(sum(expected) / 45), rel=1e-12)
    assert one.seconds > 0


def test_perplexity_upcasts_low_precision_logits(tiny_model):
    model = tiny_model("llama")
    windows = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    full = perplexity(model, windows, progress=False)
    half = perplexity(model.to(torch.bfloat16), windows, progress=False)
    assert half.nll.dtype == torch.float64
    assert half.ppl == pytest.approx(full.ppl, rel=0.05)


def test_perplexity_rejects_bad_input(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(PhasecodeError, match="batch_size"):
        perplexity(model, torch.zeros(2, 8, dtype=torch.long), batch_size=0, progress=False)
    with pytest.raises(PhasecodeError, match="seq_len >= 2"):
        perplexity(model, torch.zeros(2, 1, dtype=torch.long), progress=False)
    too_long = torch.zeros(1, model.config.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(PhasecodeError, match="exceeds the model's"):
        perplexity(model, too_long, progress=False)
