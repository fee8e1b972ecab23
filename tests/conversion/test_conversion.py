"""convert(): a tiny base model end to end into a SpikingModel with a neuron on every site."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict

import pytest
import torch
from helpers import CONVERTIBLE_SIZES, eager_logits, logits, write_calibration
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from phasecode.calibration.text import read_texts, token_batches
from phasecode.conversion import convert as convert_module
from phasecode.conversion.convert import (
    FAR_NLL,
    RANGE_EVIDENCE,
    RANGE_PRIOR,
    RANGE_PRIOR_TIMESTEPS,
    SCORING_WINDOWS,
    SpikingModel,
    calibration_windows,
    clear_winner,
    convert,
    warn_if_far,
)
from phasecode.conversion.handlers import Coder
from phasecode.inference.nll import perplexity
from phasecode.inference.prefix_choice import NO_PREFIX, PrefixRequest
from phasecode.models.hadamard import OnlineRotation
from phasecode.models.sites import spiking_sites
from phasecode.settings import RANGE_STRENGTHS, FitSettings, SamplingSettings, TrainConfig

ARCHS = ["llama", "qwen2", "mistral"]
CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
LAYERS = CONVERTIBLE_SIZES["num_hidden_layers"]
FAST_TRAINING = TrainConfig(rounds=2, search_steps=2, search_samples=64)
BOS = 0
GIVEN = PrefixRequest("ids", ids=(BOS, 7))


def _model(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(CONFIGS[arch](**CONVERTIBLE_SIZES)).eval()


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("calibration") / "calib.jsonl")


def _sampling(calibration) -> SamplingSettings:
    return SamplingSettings(samples=64, calibration=calibration, sequences=4, seq_len=32)


def _tokens() -> torch.Tensor:
    return torch.randint(2, 258, (2, 16), generator=torch.Generator().manual_seed(5))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _logits_under(spiking: SpikingModel, surgery, tokens: torch.Tensor) -> torch.Tensor:
    with surgery:
        return logits(spiking.model, tokens)


@pytest.fixture(scope="module", params=ARCHS)
def converted(request, calibration, tiny_tokenizer):
    """(arch, spiking model, the original model's logits) for the default conversion."""
    model = _model(request.param)
    tokens = _tokens()
    original = logits(model, tokens)
    fit = FitSettings("mgpc", 4, 2, FAST_TRAINING)
    spiking = convert(
        model, tiny_tokenizer, fit, _sampling(calibration), progress=False, prefix=GIVEN
    )
    assert spiking.model is model  # converted in place
    return request.param, spiking, original


# ----------------------------------------------------------------------------- default


def test_every_site_has_a_neuron(converted):
    _, spiking, _ = converted
    names = [site.name for site in spiking_sites(spiking.model)]
    assert len(spiking.sites) == 10 * LAYERS + 1
    assert spiking.sites == names
    assert spiking.sites[-1] == "lm_head"
    assert spiking.table.sites == len(spiking.sites)
    assert spiking.table.timesteps == 4
    assert spiking.table.phase is not None
    assert all(sum(a) == 4 and len(a) <= 2 for a in spiking.table.phase.allocation)


def test_spec_records_the_settings(converted):
    _, spiking, _ = converted
    spec = spiking.spec
    assert (spec.method, spec.timesteps, spec.grains) == ("mgpc", 4, 2)
    assert spec.rotate and spec.rotation_seed == 0 and spec.lm_head
    assert spiking.report["spec"] == asdict(spec)
    assert isinstance(spiking.down_rotation, OnlineRotation)
    assert spiking.down_rotation.width == CONVERTIBLE_SIZES["intermediate_size"]


def test_a_given_prefix_is_used_and_reported(converted):
    _, spiking, _ = converted
    tokens = spiking.spec.prefix_tokens
    assert tokens == GIVEN.ids
    assert spiking.report["prefix_choice"] == {"chosen": list(GIVEN.ids), "reason": "given (ids)"}
    assert spiking.prefix is not None
    assert spiking.prefix.token_ids == list(tokens)
    assert len(spiking.prefix.keys_values) == LAYERS
    for key, value in spiking.prefix.keys_values:
        assert key.shape == value.shape == (1, 2, len(tokens), 16)
    assert spiking.report["prefix_seconds"] > 0


def test_report_has_times_and_per_site_scores(converted):
    _, spiking, _ = converted
    report = spiking.report
    assert report["seconds"]["calibration"] > 0
    assert report["seconds"]["training"] > 0
    assert [row["name"] for row in report["sites"]] == spiking.sites
    ratios = [row["ratio"] for row in report["sites"]]
    for row in report["sites"]:
        assert {"mse", "lloyd_max_mse", "ratio", "uniform_mse", "uniform_ratio"} <= set(row)
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert row["mse"] > 0
    assert report["mean_ratio"] == pytest.approx(sum(ratios) / len(ratios))
    json.dumps(report, allow_nan=False)  # goes into the artifact as is


def test_analog_equals_the_original_model(converted):
    """Rotation and prefix preparation leave the function unchanged (float32, rel 1e-4)."""
    _, spiking, original = converted
    analog = _logits_under(spiking, spiking.analog(), _tokens())
    assert (analog - original).abs().max() <= 1e-4 * original.abs().max()
    plain = logits(spiking.model, _tokens())  # without the online rotation the model is off
    assert (plain - original).abs().max() > 1e-3 * original.abs().max()


def test_coded_changes_the_logits(converted):
    _, spiking, _ = converted
    tokens = _tokens()
    analog = _logits_under(spiking, spiking.analog(), tokens)
    coded = _logits_under(spiking, spiking.coded(), tokens)
    assert torch.isfinite(coded).all()
    assert _relative_error(coded, analog) > 1e-3
    assert _relative_error(coded, analog) < 1  # coded, not destroyed
    assert isinstance(spiking.coded().handler, Coder)


def test_coded_perplexity_after_the_prefix(converted, tiny_tokenizer):
    _, spiking, _ = converted
    windows = _tokens()
    with spiking.analog():
        analog = perplexity(spiking.model, windows, spiking.prefix, progress=False).ppl
    with spiking.coded():
        coded = perplexity(spiking.model, windows, spiking.prefix, progress=False).ppl
    assert math.isfinite(analog) and math.isfinite(coded)
    assert coded != analog


def test_surgeries_leave_no_trace(converted):
    _, spiking, original = converted
    model = spiking.model
    with spiking.coded():
        assert model.config._attn_implementation == "phasecode"
    assert model.config._attn_implementation != "phasecode"
    for name, module in model.named_modules():
        assert not module._forward_pre_hooks, name
        assert "forward" not in module.__dict__, name


# ----------------------------------------------------------------------------- options


@pytest.fixture(scope="module")
def plain(calibration, tiny_tokenizer):
    """llama without rotation, prefix or lm_head neuron, and a fixed code (LAS) this time;
    with the eager reference logits."""
    model = _model("llama")
    tokens = _tokens()
    reference = eager_logits(model, tokens)
    fit = FitSettings("las", 4, 1)
    spiking = convert(
        model,
        tiny_tokenizer,
        fit,
        _sampling(calibration),
        rotate=False,
        prefix=NO_PREFIX,
        lm_head=False,
        progress=False,
    )
    return spiking, reference


def test_no_prefix(plain):
    spiking, _ = plain
    assert spiking.spec.prefix_tokens == ()
    assert spiking.prefix is None
    assert spiking.report["prefix_choice"]["chosen"] == []
    assert spiking.report["prefix_seconds"] == 0.0


def test_no_lm_head_site(plain):
    spiking, _ = plain
    assert "lm_head" not in spiking.sites
    assert len(spiking.sites) == 10 * LAYERS
    assert spiking.table.sites == 10 * LAYERS
    assert not spiking.spec.lm_head
    model = spiking.model
    with spiking.coded():
        assert not model.lm_head._forward_pre_hooks  # the head reads analog values
        assert model.model.layers[1].self_attn.o_proj._forward_pre_hooks


def test_no_rotation(plain):
    spiking, reference = plain
    assert not spiking.spec.rotate
    assert spiking.down_rotation is None
    analog = _logits_under(spiking, spiking.analog(), _tokens())
    assert (analog - reference).abs().max() <= 1e-5 * reference.abs().max()
    coded = _logits_under(spiking, spiking.coded(), _tokens())
    assert _relative_error(coded, reference) > 1e-3


def test_fixed_code_spec(plain):
    spiking, _ = plain
    assert (spiking.spec.method, spiking.spec.timesteps, spiking.spec.grains) == ("las", 4, 1)
    assert spiking.report["seconds"]["training"] > 0
    assert spiking.report["spec"]["method"] == "las"


@pytest.mark.parametrize("method", ["las", "ttfs", "rate", "spikedattention", "phase"])
def test_other_methods_convert(method, calibration, tiny_tokenizer):
    fit = FitSettings(method, 4, 1)
    spiking = convert(_model("llama"), tiny_tokenizer, fit, _sampling(calibration), progress=False)
    spec = spiking.spec
    assert (spec.method, spec.timesteps, spec.grains, spec.rotate) == (method, 4, 1, True)
    choice = spiking.report["prefix_choice"]  # measured on this model
    assert list(spec.prefix_tokens) == choice["chosen"] and choice["candidates"]
    assert (spiking.prefix is not None) == bool(spec.prefix_tokens)
    assert spiking.table.sites == len(spiking.sites) == 10 * LAYERS + 1
    budget = {"ttfs": 1, "spikedattention": 2}.get(method, 0)
    assert spiking.table.max_spikes.tolist() == [budget] * spiking.table.sites
    tokens = _tokens()
    analog = _logits_under(spiking, spiking.analog(), tokens)
    coded = _logits_under(spiking, spiking.coded(), tokens)
    assert torch.isfinite(coded).all()
    assert _relative_error(coded, analog) > 1e-3
    assert len(spiking.report["sites"]) == spiking.table.sites
    assert spiking.report["spec"]["method"] == method


# ----------------------------------------------------------------------------- neuron range


def test_auto_range_scores_every_strength_on_unsampled_text(converted):
    _, spiking, _ = converted
    choice = spiking.report["neuron_range_choice"]
    assert set(choice["loss"]) == set(RANGE_STRENGTHS)
    lowest = min(choice["loss"], key=choice["loss"].get)
    prior = RANGE_PRIOR if spiking.spec.timesteps >= RANGE_PRIOR_TIMESTEPS else lowest
    assert choice["chosen"] in (lowest, prior)
    assert (choice["chosen"] == lowest) == (lowest == prior or choice["evidence"] > 2)
    assert "after those sampled" in choice["reason"]
    # the prepared ANN on the same windows: the coded model is near it
    assert abs(choice["loss"][choice["chosen"]] - choice["prepared_ann_loss"]) < FAR_NLL
    for row in spiking.report["sites"]:
        assert row["calibration_peak"] > 0, row["name"]


def test_a_coded_model_far_from_the_ann_is_named_in_a_warning():
    with pytest.warns(UserWarning, match=r"x2\.72 the prepared ANN's at T=10"):
        warn_if_far(1.0, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_far(FAR_NLL * 0.9, 10)  # closer than that: silent


def test_conversion_warns_when_its_coded_model_is_far_from_the_ann(
    monkeypatch, calibration, tiny_tokenizer
):
    # every coded model counts as far: the warning must come out of a real conversion
    monkeypatch.setattr(convert_module, "FAR_NLL", -math.inf)
    fit = FitSettings("mgpc", 4, 2, FAST_TRAINING)
    with pytest.warns(UserWarning, match="do not approximate the model"):
        convert(_model("llama"), tiny_tokenizer, fit, _sampling(calibration), False, prefix=GIVEN)


def _windows_nll(*rows: list[float]) -> dict[str, torch.Tensor]:
    return {
        name: torch.tensor(row, dtype=torch.float64)
        for name, row in zip(("fitted", "halfway", "peak"), rows, strict=False)
    }


def test_auto_range_keeps_the_prior_unless_another_range_clearly_wins():
    # lower on average, but by less than the windows' noise: the prior stays
    noisy = _windows_nll([3.0, 4.1, 3.5, 4.0], [3.1, 4.0, 3.6, 4.0])
    chosen, evidence = clear_winner(noisy, "halfway")
    assert chosen == "halfway" and 0 < evidence < RANGE_EVIDENCE
    # lower on every window by about the same: a clear win
    clear = _windows_nll([3.00, 4.00, 3.50, 3.90], [3.05, 4.04, 3.56, 3.94])
    chosen, evidence = clear_winner(clear, "halfway")
    assert chosen == "fitted" and evidence > RANGE_EVIDENCE
    # the prior lowest; one window gives no spread to judge by
    assert clear_winner(_windows_nll([3.2, 3.3], [3.1, 3.2], [3.4, 3.5]), "halfway") == (
        "halfway",
        0.0,
    )
    assert clear_winner(_windows_nll([3.0], [3.5]), "halfway") == ("halfway", 0.0)
    # no prior (short T): the lowest mean, however noisy
    assert clear_winner(noisy, None) == ("fitted", 0.0)


def test_the_range_is_scored_on_text_after_the_calibration_windows(tiny_tokenizer, calibration):
    sampling = _sampling(calibration)
    texts = read_texts(calibration)
    windows, unseen = calibration_windows(tiny_tokenizer, texts, sampling)
    plain = token_batches(tiny_tokenizer, texts, sampling.sequences, sampling.seq_len, False)
    longer = token_batches(
        tiny_tokenizer, texts, sampling.sequences + SCORING_WINDOWS, sampling.seq_len, False
    )
    assert torch.equal(windows, plain)  # the samples come from the same windows as before
    assert torch.equal(unseen, longer[sampling.sequences :])
    needed = sampling.sequences * sampling.seq_len  # only enough text for the calibration
    ids = tiny_tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"][: needed + 8]
    short = [tiny_tokenizer.decode(ids)]
    windows, unseen = calibration_windows(tiny_tokenizer, short, sampling)
    assert unseen is None and windows.shape == plain.shape


def test_the_fitted_range_saturates_below_some_peaks_and_is_otherwise_the_same_code(
    calibration, tiny_tokenizer
):
    """Widening changes only where a neuron saturates: each peak-range neuron is its fitted
    neuron scaled by saturation ratio (or left as it was where it already reached)."""
    tables, reports = {}, {}
    for neuron_range in ("fitted", "peak"):
        fit = FitSettings("mgpc", 4, 2, FAST_TRAINING, neuron_range=neuron_range)
        spiking = convert(
            _model("llama"), tiny_tokenizer, fit, _sampling(calibration), False, prefix=GIVEN
        )
        tables[neuron_range], reports[neuron_range] = spiking.table, spiking.report["sites"]
    fitted, peak = tables["fitted"], tables["peak"]
    short = torch.tensor(
        [r["calibration_peak"] > r["saturation"] * (1 + 1e-5) for r in reports["fitted"]]
    )
    assert short.any()  # a sample of a few hundred values misses some site's largest
    factor = peak.weight[:, 0] / fitted.weight[:, 0]
    assert torch.allclose(peak.threshold, fitted.threshold * factor[:, None])
    assert torch.allclose(peak.reset, fitted.reset * factor[:, None])
    assert torch.equal(factor > 1 + 1e-5, short)
    for row in reports["peak"]:  # no widened neuron saturates below its site's peak
        assert row["saturation"] >= row["calibration_peak"] * (1 - 1e-5), row["name"]
