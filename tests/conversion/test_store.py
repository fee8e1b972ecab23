"""save_spiking / load_spiking: an artifact holds the neurons, the base model gives the rest."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import CONVERTIBLE_SIZES, write_calibration
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from phasecode.artifacts import load_artifact, save_artifact
from phasecode.cache.fingerprint import model_fingerprint
from phasecode.coding.baselines import las
from phasecode.conversion.convert import convert
from phasecode.conversion.store import KIND, load_spiking, read_spiking_metadata, save_spiking
from phasecode.errors import PhasecodeError
from phasecode.inference.nll import perplexity
from phasecode.settings import FitSettings, SamplingSettings, TrainConfig


def _base(seed: int = 0) -> nn.Module:
    """The same tiny LLaMA every time (per seed), as a freshly loaded base model would be."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(LlamaConfig(**CONVERTIBLE_SIZES)).eval()


def _tokens() -> torch.Tensor:
    return torch.randint(2, 258, (2, 16), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def _coded_logits(spiking, tokens: torch.Tensor) -> torch.Tensor:
    with spiking.coded():
        return spiking.model(tokens).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_tokenizer):
    """A converted tiny LLaMA saved as an artifact, with its coded logits."""
    work = tmp_path_factory.mktemp("store")
    calibration = write_calibration(work / "calib.jsonl", docs=8)
    model = _base()
    base = {"name": "tiny-llama", "fingerprint": model_fingerprint(model)}
    fit = FitSettings("mgpc", 4, 2, TrainConfig(rounds=2, search_steps=2, search_samples=64))
    sampling = SamplingSettings(samples=64, calibration=calibration, sequences=4, seq_len=32)
    spiking = convert(model, tiny_tokenizer, fit, sampling, progress=False)
    directory = work / "artifact"
    save_spiking(directory, spiking, base)
    return directory, spiking, base, _coded_logits(spiking, _tokens())


def test_round_trip_reproduces_the_coded_logits(saved, tiny_tokenizer):
    directory, spiking, _, coded = saved
    loaded = load_spiking(directory, _base(), tiny_tokenizer)
    assert loaded.spec == spiking.spec
    assert loaded.sites == spiking.sites
    assert loaded.tokenizer is tiny_tokenizer
    for name, tensor in spiking.table.to_tensors().items():
        assert torch.equal(loaded.table.to_tensors()[name], tensor), name
    assert loaded.table.allocations == spiking.table.allocations
    assert torch.equal(_coded_logits(loaded, _tokens()), coded)


def test_round_trip_rebuilds_the_prepared_model(saved, tiny_tokenizer):
    directory, spiking, _, _ = saved
    loaded = load_spiking(directory, _base(), tiny_tokenizer)
    assert spiking.spec.rotate  # the rotation is exercised
    assert torch.equal(loaded.down_rotation.matrix(), spiking.down_rotation.matrix())
    for (name, p1), p2 in zip(
        loaded.model.named_parameters(), spiking.model.parameters(), strict=True
    ):
        assert torch.equal(p1, p2), name
    assert loaded.report == json.loads(json.dumps(spiking.report))


def test_round_trip_reproduces_the_prefixed_coded_perplexity(saved, tiny_tokenizer):
    """What ``phasecode eval`` computes: the coded model scored after the prefix."""
    directory, spiking, _, _ = saved
    loaded = load_spiking(directory, _base(), tiny_tokenizer)
    assert spiking.spec.prefix_tokens and loaded.prefix.token_ids == spiking.prefix.token_ids
    windows = _tokens()
    with spiking.coded():
        original = perplexity(spiking.model, windows, spiking.prefix, progress=False)
    with loaded.coded():
        again = perplexity(loaded.model, windows, loaded.prefix, progress=False)
    assert torch.equal(again.nll, original.nll)


def test_round_trip_rebuilds_the_prefix_bit_exactly(saved, tiny_tokenizer):
    directory, spiking, _, _ = saved
    loaded = load_spiking(directory, _base(), tiny_tokenizer)
    assert loaded.prefix.token_ids == spiking.prefix.token_ids
    for (k1, v1), (k2, v2) in zip(
        loaded.prefix.keys_values, spiking.prefix.keys_values, strict=True
    ):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_metadata_describes_the_conversion(saved):
    directory, spiking, base, _ = saved
    metadata = read_spiking_metadata(directory)
    assert metadata["kind"] == KIND == "spiking-model"
    assert metadata["base_model"] == base
    assert metadata["sites"] == spiking.sites
    assert metadata["spec"]["prefix_tokens"] == list(spiking.spec.prefix_tokens)
    assert metadata["allocation"] == spiking.table.allocations
    assert metadata["report"]["seconds"]["training"] > 0


def test_a_different_base_model_is_refused(saved, tiny_tokenizer):
    directory, _, base, _ = saved
    model = _base()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] += 1.0
    before = model_fingerprint(model)
    assert before != base["fingerprint"]
    with pytest.raises(PhasecodeError) as info:
        load_spiking(directory, model, tiny_tokenizer)
    message = str(info.value)
    assert "fingerprint" in message and "base model" in message
    assert "tiny-llama" in message and "different model" in message
    assert model_fingerprint(model) == before  # refused before rotating anything


def test_the_converted_model_itself_is_refused(saved, tiny_tokenizer):
    """Conversion rotates in place: the converted model is no longer the base model."""
    directory, spiking, _, _ = saved
    with pytest.raises(PhasecodeError, match="fingerprint"):
        load_spiking(directory, spiking.model, tiny_tokenizer)


def test_a_neurons_artifact_is_refused(tmp_path, tiny_tokenizer):
    table = las(torch.ones(4), 4)
    save_artifact(tmp_path, table.to_tensors(), {"kind": "neurons", "allocation": None})
    _, metadata = load_artifact(tmp_path)  # a valid artifact, only of the wrong kind
    assert metadata["kind"] == "neurons"
    for read in (read_spiking_metadata, lambda d: load_spiking(d, _base(), tiny_tokenizer)):
        with pytest.raises(PhasecodeError) as info:
            read(tmp_path)
        message = str(info.value)
        assert "not a converted model" in message
        assert "'neurons'" in message and "phasecode convert" in message
        assert str(tmp_path) in message


def test_a_directory_without_an_artifact_is_refused(tmp_path):
    with pytest.raises(PhasecodeError, match="not a phasecode artifact"):
        read_spiking_metadata(tmp_path)


def test_a_tampered_table_is_refused(saved, tmp_path, tiny_tokenizer):
    directory, _, _, _ = saved
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in directory.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    blob = bytearray((copy / "neurons.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (copy / "neurons.safetensors").write_bytes(bytes(blob))
    with pytest.raises(PhasecodeError, match="checksum"):
        load_spiking(copy, _base(), tiny_tokenizer)


def test_artifact_keeps_the_training_loss_curve(saved):
    directory, spiking, _, _ = saved
    tensors, metadata = load_artifact(directory)
    curve, phases = tensors["loss_curve"], metadata["loss_phases"]
    assert curve.shape == (len(spiking.sites), len(phases))
    assert set(phases) == {"threshold", "base"}
    torch.testing.assert_close(curve, spiking.loss_curve)
