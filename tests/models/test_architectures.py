"""Qwen3, Gemma 3, Phi-3, OLMo 2 and LLaMA 3 rope scaling, as tiny random models: every
rotation exact in float64, the spiking network equal to the fast path with a prefix, energy
estimates that follow their operators, artifacts that round-trip, and generate."""

from __future__ import annotations

import pytest
import torch
from architectures import ARCHITECTURES, online_rotations, tiny_architecture, tiny_config
from gguf_files import write_tiny_gguf
from helpers import randomize_weights, write_calibration
from transformers import AutoModelForCausalLM

import phasecode as pc
from phasecode.api.simulate import simulation_report
from phasecode.conversion import surgery
from phasecode.conversion.convert import SpikingModel, convert
from phasecode.conversion.handlers import Coder, Passthrough
from phasecode.errors import PhasecodeError
from phasecode.inference.prefix_choice import PrefixRequest
from phasecode.models.adapters import adapter_for
from phasecode.models.hadamard import OnlineRotation
from phasecode.models.precision import to_float64
from phasecode.models.rotation import (
    fold_value_rotation,
    fuse_norms,
    post_norm_rotation,
    rotate_model,
)
from phasecode.settings import FitSettings, SamplingSettings, TrainConfig
from phasecode.simulation.counting import Counter
from phasecode.simulation.energy import PRESETS, energy
from phasecode.simulation.estimate import site_energy
from phasecode.simulation.network import SpikingSimulator
from phasecode.training.neurons import las

FAST_TRAINING = TrainConfig(rounds=2, search_steps=2, search_samples=64)
LENGTH = 12


def _tokens(length: int = LENGTH) -> torch.Tensor:
    return torch.randint(2, 258, (2, length), generator=torch.Generator().manual_seed(3))


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _float64(name: str) -> torch.nn.Module:
    """Random weights, biases and norm gains (fresh ones are 1 or 0 and hide folding bugs)."""
    return to_float64(randomize_weights(tiny_architecture(name), seed=1)).eval()


# -- rotations --------------------------------------------------------------------------------


def _rotate_all(model: torch.nn.Module) -> None:
    down = rotate_model(model, seed=3)
    fold_value_rotation(model, seed=3)
    online_rotations(model, down, post_norm_rotation(model, seed=3))


STEPS = {
    "fuse": fuse_norms,
    "value": lambda model: fold_value_rotation(model, seed=3),
    "full": _rotate_all,
}


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("name", ARCHITECTURES)
@torch.no_grad()
def test_rotations_are_exact_in_float64(name, step):
    model = _float64(name)
    tokens = _tokens()
    reference = model(tokens).logits
    STEPS[step](model)
    assert _relative(model(tokens).logits, reference) <= 1e-10


@pytest.mark.parametrize("name", ["gemma3_text", "olmo2"])
@torch.no_grad()
def test_post_norm_branches_need_their_online_rotation(name):
    """Without the rotation after the post-norms, the rotated model is wrong: their writers
    are left unrotated on purpose."""
    model = _float64(name)
    tokens = _tokens()
    reference = model(tokens).logits
    down = rotate_model(model, seed=3)
    online_rotations(model, down, lambda out: out)  # no rotation after the post-norms
    assert _relative(model(tokens).logits, reference) > 1e-3


def test_post_norm_rotation_only_where_there_are_post_norms():
    assert post_norm_rotation(tiny_architecture("qwen3")) is None
    assert post_norm_rotation(tiny_architecture("phi3")) is None
    rotation = post_norm_rotation(tiny_architecture("gemma3_text"), seed=5)
    assert rotation.width == 64 and rotation.seed == 5


@pytest.mark.parametrize("name", ARCHITECTURES)
@torch.no_grad()
def test_float64_norms_keep_the_models_gain_convention(name):
    """to_float64's norms compute what the model's own do (Gemma's 1 + w included)."""
    model = randomize_weights(tiny_architecture(name), seed=1)
    tokens = _tokens()
    reference = model(tokens).logits.double()
    assert _relative(to_float64(model)(tokens).logits, reference) <= 1e-5


# -- the spiking network ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=ARCHITECTURES)
def spiking(request, tmp_path_factory, tiny_tokenizer) -> SpikingModel:
    """A float64 conversion with a given prefix, per-head rotations and every online
    rotation, so the prefix's cached keys and the post-norms' rotation are exercised."""
    calibration = write_calibration(tmp_path_factory.mktemp("arch") / "calib.jsonl")
    sampling = SamplingSettings(samples=64, calibration=calibration, sequences=4, seq_len=32)
    fit = FitSettings("mgpc", 4, 2, FAST_TRAINING)
    prefix = PrefixRequest("ids", ids=(0, 7, 9))
    model = _float64(request.param)
    spiking = convert(model, tiny_tokenizer, fit, sampling, progress=False, prefix=prefix)
    assert spiking.head_rotation is not None and spiking.prefix is not None
    return spiking


def test_sites_are_the_llama_set(spiking):
    """Ten sites per layer and the lm_head input, fused projections included."""
    assert len(spiking.sites) == 10 * spiking.model.config.num_hidden_layers + 1


def test_simulate_check_passes_in_float64(spiking):
    report = simulation_report(spiking, _tokens(16)[:1], check=True)
    assert report["check"]["passed"], report["check"]
    assert report["check"]["max_relative_difference"] <= 1e-9


def test_simulator_chunks_do_not_change_the_result(spiking):
    tokens = _tokens()
    whole = SpikingSimulator(spiking).forward(tokens)
    chunked = SpikingSimulator(spiking, token_chunk=5, attention_elements=1).forward(tokens)
    assert _relative(chunked, whole) <= 1e-12


def test_energy_estimate_follows_the_operators(spiking):
    """The estimate (norm count, GELU, q/k norms, embedding scale, post-norm rotations)
    matches what the simulator counts."""
    counter = Counter()
    SpikingSimulator(spiking, counter=counter).forward(_tokens()[:1])
    costs = PRESETS["45nm-fp32"]
    estimate = site_energy(spiking.model, spiking.sites, costs, LENGTH, len(spiking.prefix))
    per_token = torch.zeros(len(spiking.sites), dtype=torch.float64)
    for (layer, op), count in counter.snn.items():
        name = "lm_head" if layer == "head" else f"{layer}.{op}"
        if name in spiking.sites:
            per_token[spiking.sites.index(name)] = count.spikes / LENGTH
    snn = energy(counter.totals("snn"), costs)["total_j"] * 1e12 / LENGTH
    ann = energy(counter.totals("ann"), costs)["total_j"] * 1e12 / LENGTH
    assert estimate.ann_pj == pytest.approx(ann, rel=0.03)
    rate = per_token / estimate.width
    assert estimate.snn_pj(rate, spiking.table.steps) == pytest.approx(snn, rel=0.06)


# -- fused projections and the activation -----------------------------------------------------


@pytest.mark.parametrize("name", ["phi3", "gemma3_text"])
def test_coded_mlp_is_bit_identical_to_site_by_site(name):
    """The one-call MLP on Phi-3's fused gate_up (row halves) and Gemma's GELU."""
    model = randomize_weights(tiny_architecture(name), seed=1)
    adapter = adapter_for(model)
    layer = adapter.decoder_layers(model)[0]
    names = [f"layers.0.{kind}" for kind in surgery.MLP_SITES]
    coder = Coder(las(torch.rand(len(names)) + 0.5, 6), names, compiled=False)
    rotation = OnlineRotation(model.config.intermediate_size)
    x = torch.randn(2, 7, model.config.hidden_size)
    args = (adapter, layer)
    fused = surgery.spiking_mlp_forward(*args, coder, 0, rotation, None, x)
    reference = surgery.spiking_mlp_forward(*args, lambda s, v: coder(s, v), 0, rotation, None, x)
    analog = surgery.spiking_mlp_forward(*args, Passthrough(), 0, None, None, x)
    assert _relative(fused, analog) > 1e-3
    assert torch.equal(fused, reference)
    mlp = adapter.part(layer, adapter.mlp)
    torch.testing.assert_close(analog, mlp(x), rtol=1e-5, atol=1e-6)  # the model's own MLP


# -- artifacts, loading and generate ----------------------------------------------------------


@pytest.fixture(scope="module", params=ARCHITECTURES)
def saved(request, tmp_path_factory, tiny_tokenizer):
    """A float32 model saved as a directory, converted by the public API (2-token prefix)."""
    root = tmp_path_factory.mktemp(request.param)
    randomize_weights(tiny_architecture(request.param), seed=2).save_pretrained(root / "model")
    tiny_tokenizer.save_pretrained(root / "model")
    model, tokenizer = pc.load_model(str(root / "model"), device="cpu")
    config = pc.ConversionConfig(samples=64, sequences=4, seq_len=32, rounds=4, prefix=[0, 12])
    calibration = write_calibration(root / "calib.jsonl")
    snn = pc.convert(model, tokenizer, config, calibration=calibration, progress=False)
    return root, snn


def test_artifact_round_trip(saved):
    root, snn = saved
    snn.save_pretrained(root / "artifact")
    loaded = pc.load(root / "artifact", device="cpu")
    ids = _tokens()
    assert torch.equal(loaded(ids).logits, snn(ids).logits)
    with loaded.analog(), snn.analog():
        assert torch.equal(loaded(ids).logits, snn(ids).logits)


def test_generate_with_the_prefix_equals_decoding_without_a_cache(saved):
    """HF generate (a KV cache holding the prefix, sliding layers on Gemma) against whole-
    sequence argmax decoding."""
    _, snn = saved
    ids = _tokens(10)[:1]
    expected = ids
    for _ in range(6):
        logits = snn(expected, use_cache=False).logits
        expected = torch.cat([expected, logits[:, -1:].argmax(-1)], dim=1)
    got = snn.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert torch.equal(got, expected)


# -- what is refused ------------------------------------------------------------------------


def test_logit_softcapping_is_refused_in_one_line(tiny_tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_config(
        tiny_config("gemma3_text", final_logit_softcapping=30.0)
    ).eval()
    with pytest.raises(PhasecodeError, match="final_logit_softcapping is not supported") as info:
        pc.convert(model, tiny_tokenizer, pc.ConversionConfig(), progress=False)
    assert "\n" not in str(info.value)


def test_gemma3_gguf_loads_with_the_config_transformers_derives(tmp_path, tiny_tokenizer):
    """A llama.cpp-style Gemma 3 GGUF (gains stored as 1 + w, architecture ``gemma3``) loads
    as ``gemma3_text`` with the same logits, and converts. A GGUF carries neither the query
    scale nor the local/global pattern, so transformers derives Gemma 3's defaults (256; five
    local layers to one global): the model written here has them too."""
    model = tiny_architecture("gemma3_text", query_pre_attn_scalar=256, layer_types=None)
    randomize_weights(model, seed=2)
    path = write_tiny_gguf(tmp_path / "gemma.gguf", model)
    loaded, _ = pc.load_model(str(path), device="cpu")  # (a byte vocabulary without <unk>,
    # which transformers' Gemma tokenizer conversion needs: the tests' tokenizer converts)
    assert loaded.config.model_type == "gemma3_text"
    assert adapter_for(loaded).scales_embedding(loaded)
    ids = torch.tensor([[0, 5, 7, 90, 3, 44, 61, 200, 9, 12]])  # beyond the 8-token window
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    config = pc.ConversionConfig(samples=64, sequences=4, seq_len=32, rounds=2, prefix=[0])
    calibration = write_calibration(tmp_path / "calib.jsonl")
    snn = pc.convert(loaded, tiny_tokenizer, config, calibration=calibration, progress=False)
    assert snn(ids).logits.shape == (1, 10, model.config.vocab_size)
