"""Weight fake-quantization (Table 8): error bounds, which weights, order in the conversion, and
that a reloaded artifact re-applies it exactly."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_llama, write_calibration

from phasecode.cache.fingerprint import model_fingerprint
from phasecode.conversion.convert import calibrate, convert
from phasecode.conversion.store import load_spiking, read_spiking_metadata, save_spiking
from phasecode.errors import PhasecodeError
from phasecode.models.adapters import adapter_for
from phasecode.models.quantize import (
    check_weight_bits,
    decoder_linears,
    quantize_model,
    quantize_rows,
)
from phasecode.models.rotation import fold_value_rotation, rotate_model
from phasecode.settings import FitSettings, SamplingSettings

LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


def _weights() -> torch.Tensor:
    """Gaussian rows with one large outlier per row, the case per-channel scales are for."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=gen)
    w[torch.arange(16), torch.randint(64, (16,), generator=gen)] *= 20
    return w


@pytest.mark.parametrize("bits", [8, 4])
def test_rows_are_on_their_grid_within_half_a_step(bits):
    w = _weights()
    q = quantize_rows(w, bits)
    levels = 2 ** (bits - 1) - 1
    step = (w.abs().amax(1, keepdim=True) / levels).double()
    error = (q.double() - w.double()).abs()
    assert (error <= step / 2 * (1 + 1e-6)).all()
    codes = q.double() / step
    assert torch.allclose(codes, codes.round(), atol=1e-4)  # integer multiples of the step
    assert codes.abs().max() <= levels + 1e-4
    for row in q:
        assert row.unique().numel() <= 2 * levels + 1
    assert torch.allclose(q.abs().amax(1), w.abs().amax(1))  # the row's peak is a level


def test_eight_bits_are_closer_than_four():
    w = _weights()
    e8 = (quantize_rows(w, 8) - w).pow(2).sum(1)
    e4 = (quantize_rows(w, 4) - w).pow(2).sum(1)
    assert (e8 < e4 / 100).all()  # ~2^8 times smaller in expectation


def test_a_zero_row_stays_zero():
    w = _weights()
    w[3] = 0
    assert torch.equal(quantize_rows(w, 4)[3], torch.zeros(64))


@pytest.mark.parametrize("bad", [3, 16, True, "8"])
def test_unsupported_widths_are_user_errors(bad):
    with pytest.raises(PhasecodeError, match="weight bits must be 8 or 4"):
        check_weight_bits(bad)


def test_quantize_model_touches_only_the_decoder_linears(tiny_model):
    model = tiny_model("qwen2")  # q/k/v carry biases, which stay in full precision
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    quantize_model(model, 4)
    linears = {id(m.weight) for m in decoder_linears(model)}
    assert len(linears) == LINEARS_PER_LAYER * adapter_for(model).num_layers(model)
    for name, param in model.named_parameters():
        if id(param) in linears:
            assert not torch.equal(param, before[name]), name
            assert all(row.unique().numel() <= 15 for row in param), name
        else:  # embeddings, lm_head, norms, biases
            assert torch.equal(param, before[name]), name


# ----------------------------------------------------------------------------- conversion


@pytest.fixture(scope="module")
def sampling(tmp_path_factory) -> SamplingSettings:
    calibration = write_calibration(tmp_path_factory.mktemp("quantize") / "calib.jsonl", docs=8)
    return SamplingSettings(samples=64, calibration=calibration, sequences=4, seq_len=32)


def _tokens() -> torch.Tensor:
    return torch.randint(2, 258, (2, 12), generator=torch.Generator().manual_seed(4))


@torch.no_grad()
def _coded_logits(spiking) -> torch.Tensor:
    with spiking.coded():
        return spiking.model(_tokens()).logits


def test_rotated_weights_are_quantized(tiny_tokenizer, sampling):
    """The weights the spiking model computes with are the rotated weights, quantized."""
    model = tiny_llama()
    reference = tiny_llama()
    rotate_model(reference, sampling.seed, online_down=True)
    fold_value_rotation(reference, sampling.seed)
    quantize_model(reference, 4)
    fit = FitSettings("las", 4, 1)
    spiking = convert(model, tiny_tokenizer, fit, sampling, progress=False, weight_bits=4)
    assert spiking.spec.weight_bits == 4
    for ours, theirs in zip(decoder_linears(model), decoder_linears(reference), strict=True):
        assert torch.equal(ours.weight, theirs.weight)


def test_samples_are_collected_after_quantization(tiny_tokenizer, sampling):
    full = calibrate(tiny_llama(), tiny_tokenizer, sampling, progress=False)
    four = calibrate(tiny_llama(), tiny_tokenizer, sampling, progress=False, weight_bits=4)
    assert full.sites == four.sites
    assert four.spec.weight_bits == 4 and full.spec.weight_bits is None
    qkv = full.sites.index("layers.0.qkv")  # its input is the embedding: unchanged
    assert torch.equal(full.train[qkv], four.train[qkv])
    down = full.sites.index("layers.0.down")
    assert not torch.equal(full.train[down], four.train[down])


def test_reload_reproduces_the_quantized_coded_logits(tiny_tokenizer, sampling, tmp_path):
    model = tiny_llama()
    base = {"name": "tiny", "fingerprint": model_fingerprint(model)}
    fit = FitSettings("las", 4, 1)
    spiking = convert(model, tiny_tokenizer, fit, sampling, progress=False, weight_bits=8)
    save_spiking(tmp_path, spiking, base)
    assert read_spiking_metadata(tmp_path)["spec"]["weight_bits"] == 8
    loaded = load_spiking(tmp_path, tiny_llama(), tiny_tokenizer)
    assert loaded.spec == spiking.spec
    for linear in decoder_linears(loaded.model):  # re-quantized on load
        assert all(row.unique().numel() <= 255 for row in linear.weight)
    assert torch.equal(_coded_logits(loaded), _coded_logits(spiking))
