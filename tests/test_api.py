"""The public API (``import phasecode as pc``) and the spiking model as a transformers causal
LM: generate, pipeline, lm-eval's HFLM, save/load, modes, the prefix injected in forward."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from helpers import save_tiny_model, tiny_llama, write_calibration

import phasecode as pc
from phasecode.conversion.causal_lm import SpikingModelForCausalLM

FAST = dict(samples=64, sequences=4, seq_len=32, rounds=4)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("api")
    save_tiny_model(root / "model", tiny_tokenizer)
    write_calibration(root / "calib.jsonl")
    return root


def converted(files, **changes) -> SpikingModelForCausalLM:
    """The saved tiny model loaded and converted by the public API, with a 2-token prefix."""
    model, tokenizer = pc.load_model(str(files / "model"), device="cpu")
    config = pc.ConversionConfig(**{**FAST, "prefix": [0, 12], **changes})
    return pc.convert(model, tokenizer, config, calibration=files / "calib.jsonl", progress=False)


@pytest.fixture(scope="module")
def snn(files) -> SpikingModelForCausalLM:
    return converted(files)


def greedy_without_cache(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Argmax decoding by whole-sequence forwards: independent of generate and of caches."""
    for _ in range(steps):
        logits = model(ids, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    return ids


def test_exports_are_the_contract():
    for name in (
        "load_model",
        "ConversionConfig",
        "convert",
        "SpikingModelForCausalLM",
        "load",
        "perplexity",
        "zero_shot",
        "energy",
        "simulate",
    ):
        assert name in pc.__all__ and getattr(pc, name) is not None
    with pytest.raises(AttributeError):
        pc.no_such_name  # noqa: B018


def test_forward_is_the_fast_path_after_the_prefix(snn, tiny_tokenizer):
    ids = tiny_tokenizer("the quick brown fox", return_tensors="pt")["input_ids"]
    logits = snn(ids).logits
    assert logits.shape[:2] == ids.shape  # the caller's tokens only, not the prefix's
    with snn.spiking.coded():
        assert torch.equal(logits, snn.spiking.logits(ids))
    with snn.analog(), snn.spiking.analog():
        assert torch.equal(snn(ids).logits, snn.spiking.logits(ids))
    assert snn.mode == "snn"  # the mode is restored after the block
    # nothing of phasecode is left on the base model between calls
    attention = snn.model.model.layers[0].self_attn
    assert "phasecode_handler" not in attention.__dict__
    assert snn.model.config._attn_implementation != "phasecode"


@pytest.mark.parametrize("analog", [False, True])
def test_generate_is_greedy_decoding_with_the_prefix(snn, tiny_tokenizer, analog):
    inputs = tiny_tokenizer("spiking neurons", return_tensors="pt")
    with snn.analog() if analog else snn.coded():
        out = snn.generate(**inputs, max_new_tokens=6, do_sample=False)
        expected = greedy_without_cache(snn, inputs["input_ids"], 6)
    assert torch.equal(out, expected)


def test_left_padded_batch_generates_as_each_row_alone(snn, tiny_tokenizer):
    tiny_tokenizer.pad_token = tiny_tokenizer.eos_token
    tiny_tokenizer.padding_side = "left"
    prompts = ["a lazy dog", "the quick brown fox jumps"]
    batch = tiny_tokenizer(prompts, return_tensors="pt", padding=True)
    together = snn.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=1)
    for row, prompt in enumerate(prompts):
        alone = snn.generate(**tiny_tokenizer(prompt, return_tensors="pt"), max_new_tokens=4)
        assert together[row, -4:].tolist() == alone[0, -4:].tolist()


def test_pipeline_runs_the_spiking_model(snn, tiny_tokenizer):
    generator = transformers.pipeline("text-generation", model=snn, tokenizer=tiny_tokenizer)
    text = generator("the quick", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    ids = tiny_tokenizer("the quick", return_tensors="pt")
    expected = greedy_without_cache(snn, ids["input_ids"], 5)
    assert text == tiny_tokenizer.decode(expected[0], skip_special_tokens=True)


def test_hflm_loglikelihoods_equal_phasecodes_lm_eval_model(snn, tiny_tokenizer):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from phasecode.evaluation.harness import PhasecodeLM

    pairs = [("the quick", " brown fox"), ("a lazy", " dog"), ("the quick", " code phases")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    theirs = HFLM(pretrained=snn, tokenizer=tiny_tokenizer, batch_size=2).loglikelihood(requests)
    ours = PhasecodeLM(spiking=snn, batch_size=2, progress=False).loglikelihood(requests)
    for (a, greedy_a), (b, greedy_b) in zip(theirs, ours, strict=True):
        assert a == pytest.approx(b, rel=1e-4)
        assert greedy_a == greedy_b


def test_save_and_load_give_identical_logits(snn, files, tiny_tokenizer, tmp_path):
    ids = tiny_tokenizer("jumps over the lazy dog", return_tensors="pt")["input_ids"]
    # saving at any point after convert gives a loadable artifact: after use in both modes
    snn.generate(ids, max_new_tokens=2)
    with snn.analog():
        snn(ids)
    snn.save_pretrained(tmp_path / "x")
    for loaded in (
        pc.SpikingModelForCausalLM.from_pretrained(tmp_path / "x", device="cpu"),
        pc.load(tmp_path / "x", device="cpu", dtype=None),
    ):
        assert torch.equal(loaded(ids).logits, snn(ids).logits)
        with loaded.analog(), snn.analog():
            assert torch.equal(loaded(ids).logits, snn(ids).logits)
    metadata = json.loads((tmp_path / "x" / "neurons.json").read_text())
    assert pc.ConversionConfig.from_dict(metadata["report"]["config"]) == pc.ConversionConfig(
        **FAST, prefix=(0, 12)
    )


def test_save_refuses_a_directory_of_other_files(snn, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(pc.PhasecodeError):
        snn.save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_model_built_in_memory_loads_with_its_base_given(files, tmp_path):
    base = tiny_llama()
    tokenizer = transformers.AutoTokenizer.from_pretrained(files / "model")
    spare = tiny_llama()  # the same weights, unconverted
    config = pc.ConversionConfig(**FAST, prefix=None)
    snn = pc.convert(base, tokenizer, config, ["the quick brown fox " * 20] * 4, progress=False)
    snn.save_pretrained(tmp_path / "x")
    with pytest.raises(pc.PhasecodeError, match="built in memory"):
        pc.load(tmp_path / "x", device="cpu")
    loaded = pc.load(tmp_path / "x", device="cpu", model=spare, tokenizer=tokenizer)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(loaded(ids).logits, snn(ids).logits)


def test_convert_refuses_a_converted_model(snn):
    with pytest.raises(pc.PhasecodeError, match="already converted"):
        pc.convert(snn, snn.tokenizer)
    with pytest.raises(pc.PhasecodeError, match="already converted"):
        pc.convert(snn.model, snn.tokenizer)


@pytest.mark.parametrize(
    "calibration, message",
    [([], "no text"), ([1, 2], "strings"), ("/no/such/file.jsonl", "not found")],
)
def test_bad_calibration_is_refused_before_any_work(
    tiny_model, tiny_tokenizer, calibration, message
):
    model = tiny_model("llama")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(pc.PhasecodeError, match=message):
        pc.convert(model, tiny_tokenizer, calibration=calibration)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_perplexity_of_texts_and_modes(snn, tiny_tokenizer):
    texts = ["the quick brown fox jumps over a lazy dog " * 8] * 3
    snn_ppl = pc.perplexity(snn, tiny_tokenizer, texts, windows=2, seq_len=64)
    with snn.analog():
        ann_ppl = pc.perplexity(snn, tiny_tokenizer, texts, windows=2, seq_len=64)
    assert snn_ppl > 0 and ann_ppl > 0 and snn_ppl != ann_ppl


def test_simulate_and_energy_on_the_model_object(snn, tiny_tokenizer, tmp_path):
    text = tmp_path / "eval.txt"
    text.write_text("the quick brown fox jumps over the lazy dog while neurons code " * 40)
    report = pc.simulate(snn, tiny_tokenizer, tokens=16, text=str(text))
    assert report["check"]["passed"] and report["tokens"] == 16
    energy = pc.energy(snn, tiny_tokenizer, tokens=16, windows=1, seq_len=64, text=str(text))
    assert energy["tokens"] == 16 and energy["ratios"]["total"] > 0
    with pytest.raises(pc.PhasecodeError, match="converted model"):
        pc.simulate(snn.model, tiny_tokenizer)


def test_phasecode_generate_equals_hf_generate(snn, tiny_tokenizer, tmp_path, capsys):
    """`phasecode generate` (SNN and, with --analog, the prepared ANN) gives the tokens that
    transformers' generate gives on the model object."""
    from phasecode.jobs.generate import generate_job

    snn.save_pretrained(tmp_path / "x")
    prompt = "the lazy fox"
    report = generate_job(tmp_path / "x", prompt, new_tokens=6, analog=True)
    ids = tiny_tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = snn.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=1, pad_token_id=1)
    assert report["tokens"] == out[0, ids.shape[1] :].tolist()
    with snn.analog():
        ann = snn.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=1, pad_token_id=1)
    text = tiny_tokenizer.decode(ann[0, ids.shape[1] :], skip_special_tokens=True)
    assert report["ann_text"] == text
