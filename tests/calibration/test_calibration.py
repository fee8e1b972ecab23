from __future__ import annotations

import copy
import json

import pytest
import torch

from phasecode.calibration import text
from phasecode.calibration.observers import collect_site_samples, hooks
from phasecode.calibration.reservoir import Reservoir
from phasecode.calibration.text import DEFAULT_CALIBRATION, data_dir, read_texts, token_batches
from phasecode.errors import PhasecodeError
from phasecode.models.sites import linear_input_sites

# ---------------------------------------------------------------- reservoir


def _stream_sample(k: int, sizes: list[int], seed: int = 0) -> tuple[torch.Tensor, Reservoir]:
    """Push arange(sum(sizes)) in chunks of the given sizes; return the sample."""
    reservoir = Reservoir(k, "layers.0.qkv", seed)
    for chunk in torch.arange(float(sum(sizes))).split(sizes):
        reservoir.push(chunk.view(-1, 1) if chunk.numel() % 2 else chunk.view(2, -1))
    return reservoir.values(), reservoir


def test_reservoir_keeps_exactly_k_distinct_values():
    values, reservoir = _stream_sample(1000, [10, 5000, 2, 300_000, 700])
    assert values.shape == (1000,) and values.dtype == torch.float32
    assert len(torch.unique(values)) == 1000  # without replacement
    assert reservoir.seen == 305_712


def test_reservoir_keeps_everything_when_stream_is_short():
    values, _ = _stream_sample(100, [30, 20])
    assert sorted(values.tolist()) == list(range(50))


def test_reservoir_is_uniform_over_a_long_stream():
    # A huge chunk first (sub-sampled path while filling), then a mix of small and huge ones.
    sizes = [400_000] + [997] * 100 + [500_000, 13, 99_287]
    n, k = sum(sizes), 4000
    values, _ = _stream_sample(k, sizes)
    uniform = values / n
    assert abs(uniform.mean().item() - 0.5) < 5 * (1 / 12 / k) ** 0.5
    quantiles = torch.quantile(uniform, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]))
    torch.testing.assert_close(
        quantiles, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9]), atol=0.03, rtol=0
    )
    # Each chunk contributes in proportion to its size (the small chunks in the middle too).
    middle = ((values >= 400_000) & (values < 400_000 + 99_700)).sum().item()
    expected = k * 99_700 / n
    assert abs(middle - expected) < 5 * expected**0.5


@pytest.mark.parametrize("forced_fallback", [False, True])
def test_reservoir_inclusion_probability_is_k_over_n(monkeypatch, forced_fallback):
    if forced_fallback:  # a threshold so low that too few keys fall below it
        monkeypatch.setattr(Reservoir, "_threshold", lambda self, n, bound: min(bound, 0.5 / n))
    sizes, k, runs = [3, 40, 2, 60, 5], 4, 1500
    n = sum(sizes)
    counts = torch.zeros(n)
    for seed in range(runs):
        values, _ = _stream_sample(k, sizes, seed)
        counts[values.long()] += 1
    expected = runs * k / n
    sigma = (runs * k / n * (1 - k / n)) ** 0.5
    assert (counts - expected).abs().max() < 5 * sigma
    assert counts.sum() == runs * k


@pytest.mark.parametrize("forced_fallback", [False, True])
def test_reservoir_skipping_zeros_samples_the_nonzero_elements_uniformly(
    monkeypatch, forced_fallback
):
    """``skip_zeros`` (the attention probabilities): zeros never enter, and each non-zero
    element is kept with probability k / (non-zero count), as if only those were pushed."""
    if forced_fallback:
        monkeypatch.setattr(Reservoir, "_threshold", lambda self, n, bound: min(bound, 0.5 / n))
    sizes, k, runs = [9, 60, 3, 90], 5, 1500
    stream = torch.arange(1.0, sum(sizes) + 1)
    stream[::3] = 0  # a third of the stream is zeros
    nonzero = int(stream.count_nonzero())
    counts = torch.zeros(len(stream) + 1)
    for seed in range(runs):
        reservoir = Reservoir(k, "layers.0.probs", seed)
        for chunk in stream.split(sizes):
            reservoir.push(chunk, skip_zeros=True)
        counts[reservoir.values().long()] += 1
        assert reservoir.seen == nonzero
    assert counts[0] == 0  # no zero was ever sampled
    kept = counts[1:][stream != 0]
    expected = runs * k / nonzero
    sigma = (expected * (1 - k / nonzero)) ** 0.5
    assert (kept - expected).abs().max() < 5 * sigma
    assert counts.sum() == runs * k


def test_reservoir_is_reproducible():
    a, _ = _stream_sample(500, [100, 50_000, 20_000], seed=3)
    b, _ = _stream_sample(500, [100, 50_000, 20_000], seed=3)
    c, _ = _stream_sample(500, [100, 50_000, 20_000], seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a.sort().values, c.sort().values)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_reservoir_rejects_non_finite(bad):
    reservoir = Reservoir(10, "layers.3.down")
    with pytest.raises(PhasecodeError, match="layers.3.down.*NaN or Inf"):
        reservoir.push(torch.tensor([1.0, bad, 2.0]))


# ---------------------------------------------------------------- observers


def _capture_inputs(model, sites, batches) -> dict[str, torch.Tensor]:
    """Site inputs from one plain forward pass, for comparison."""
    captured = {}

    def keep(name):
        return lambda module, args: captured.__setitem__(name, args[0].detach().clone())

    with hooks(model, {s.modules[0]: keep(s.name) for s in sites}), torch.no_grad():
        model(batches)
    return captured


def _no_hooks_left(model) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@pytest.fixture
def llama_and_batches(tiny_model):
    model = tiny_model("llama")
    batches = torch.randint(0, 128, (3, 12), generator=torch.Generator().manual_seed(0))
    return model, linear_input_sites(model), batches


def test_samples_are_members_of_the_site_inputs(llama_and_batches):
    model, sites, batches = llama_and_batches
    samples = collect_site_samples(model, sites, batches, samples_per_site=50, progress=False)
    captured = _capture_inputs(model, sites, batches)
    assert list(samples) == [s.name for s in sites]
    for name, values in samples.items():
        assert values.shape == (50,)
        assert torch.isin(values, captured[name]).all(), name
    assert _no_hooks_left(model)


def test_skip_positions_excludes_the_first_token(llama_and_batches):
    model, sites, batches = llama_and_batches
    # More samples than elements: the sample is the whole (skipped) input.
    samples = collect_site_samples(
        model,
        sites,
        batches,
        samples_per_site=10_000,
        skip_positions=1,
        progress=False,
    )
    captured = _capture_inputs(model, sites, batches)
    for name, values in samples.items():
        expected = captured[name][:, 1:].reshape(-1).sort().values
        torch.testing.assert_close(values.sort().values, expected)


def test_samples_are_reproducible(llama_and_batches):
    model, sites, batches = llama_and_batches
    a = collect_site_samples(model, sites, batches, samples_per_site=30, seed=1, progress=False)
    b = collect_site_samples(model, sites, batches, samples_per_site=30, seed=1, progress=False)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_hooks_removed_after_error_in_forward(llama_and_batches):
    model, sites, batches = llama_and_batches
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight[0, 0] = float("nan")
    with pytest.raises(PhasecodeError, match="site layers.1.gate_up: .*NaN"):
        collect_site_samples(model, sites, batches, samples_per_site=10, progress=False)
    assert _no_hooks_left(model)


def test_hooks_context_manager_cleans_up(tiny_model):
    model = tiny_model("mistral")

    def fail(module, args):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), hooks(model, {"model.layers.0.mlp": fail}):
        assert not _no_hooks_left(model)
        model(torch.tensor([[1, 2, 3]]))
    assert _no_hooks_left(model)
    with pytest.raises(AttributeError), hooks(model, {"lm_head": fail, "no.such": fail}):
        pass
    assert _no_hooks_left(model)


def test_forward_hooks_see_outputs(tiny_model):
    model = tiny_model("qwen2")
    seen = []
    with hooks(model, {"model.norm": lambda m, a, out: seen.append(out.shape)}, pre=False):
        model(torch.tensor([[1, 2, 3]]))
    assert seen == [torch.Size([1, 3, 64])]


def test_bad_skip_positions(llama_and_batches):
    model, sites, batches = llama_and_batches
    with pytest.raises(PhasecodeError, match="skip_positions"):
        collect_site_samples(model, sites, batches, skip_positions=12, progress=False)


# ---------------------------------------------------------------- text


def test_default_calibration_lives_in_shared_data():
    assert data_dir() / "c4" / "c4_validation_sample.jsonl" == DEFAULT_CALIBRATION
    texts = read_texts(DEFAULT_CALIBRATION)
    assert len(texts) > 100 and all(isinstance(t, str) for t in texts)


def test_data_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASECODE_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.setenv("PHASECODE_DATA", str(tmp_path / "missing"))
    with pytest.raises(PhasecodeError, match="set PHASECODE_DATA"):
        data_dir()


def test_data_dir_not_found(monkeypatch):
    monkeypatch.delenv("PHASECODE_DATA", raising=False)
    monkeypatch.setattr(text, "_find_data_dir", lambda: None)
    with pytest.raises(PhasecodeError, match="shared data dir not found: set PHASECODE_DATA"):
        data_dir()


def test_read_texts_formats(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "x": 1}))
    assert read_texts(jsonl) == ["one", "two"]
    plain = tmp_path / "doc.txt"
    plain.write_text("line one\nline two\n")
    assert read_texts(plain) == ["line one\nline two\n"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", '{"text": "ok"}\nnot json\n', r"a\.jsonl:2: expected a JSON object"),
        ("b.jsonl", '{"body": "no text field"}\n', r"b\.jsonl:1: expected .*\"text\" string"),
        ("c.jsonl", '["a list"]\n', r"c\.jsonl:1: expected"),
        ("d.jsonl", "\n\n", r"d\.jsonl: no text found"),
        ("e.txt", "  \n", r"e\.txt: no text found"),
    ],
)
def test_read_texts_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PhasecodeError, match=message):
        read_texts(path)


def test_read_texts_missing_or_binary(tmp_path):
    with pytest.raises(PhasecodeError, match="calibration file not found: .*nope.jsonl"):
        read_texts(tmp_path / "nope.jsonl")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PhasecodeError, match="not UTF-8"):
        read_texts(tmp_path / "bin.txt")


def test_token_batches_with_bos(tiny_tokenizer):
    texts = ["abcdefgh", "ijklmnop"]
    batches = token_batches(tiny_tokenizer, texts, n_sequences=3, seq_len=6)
    assert batches.shape == (3, 6) and batches.dtype == torch.long
    assert (batches[:, 0] == tiny_tokenizer.bos_token_id).all()
    stream = tiny_tokenizer("abcdefgh\n\nijklmnop\n\n", add_special_tokens=False)["input_ids"]
    assert batches[:, 1:].reshape(-1).tolist() == stream[:15]


def test_token_batches_without_bos(tiny_tokenizer):
    batches = token_batches(
        tiny_tokenizer, ["abcdefgh"] * 3, n_sequences=2, seq_len=6, add_bos=False
    )
    assert tiny_tokenizer.decode(batches.reshape(-1)) == "abcdefgh\n\nab"


def test_token_batches_tokenizer_without_bos(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.bos_token = None  # like Qwen2's tokenizer
    assert tokenizer.bos_token_id is None
    batches = token_batches(tokenizer, ["abcdefgh"], n_sequences=1, seq_len=4)
    assert tokenizer.decode(batches[0]) == "abcd"


def test_token_batches_not_enough_text(tiny_tokenizer):
    with pytest.raises(PhasecodeError, match="has 12 tokens; 3 sequences of 6 need 15"):
        token_batches(tiny_tokenizer, ["abcdefghij"], n_sequences=3, seq_len=6)
    with pytest.raises(PhasecodeError, match="seq_len >= 2"):
        token_batches(tiny_tokenizer, ["abcdefghij"], n_sequences=1, seq_len=1)


@pytest.mark.smoke
def test_default_model_end_to_end():
    from phasecode.models.loading import load_model

    model, tokenizer = load_model()
    batches = token_batches(tokenizer, read_texts(DEFAULT_CALIBRATION), n_sequences=2, seq_len=64)
    assert (batches[:, 0] == 1).all() and (batches[:, 1] != 1).all()
    sites = linear_input_sites(model)
    samples = collect_site_samples(
        model, sites, batches, samples_per_site=500, skip_positions=1, progress=False
    )
    assert len(samples) == 120
    assert all(v.shape == (500,) and torch.isfinite(v).all() for v in samples.values())
    assert _no_hooks_left(model)
