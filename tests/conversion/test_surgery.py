"""SpikingSurgery routes every activation site through a handler and leaves no trace behind."""

from __future__ import annotations

import pytest
import torch
from helpers import eager_logits, logits, randomize_weights
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from phasecode.coding import attention, neuron
from phasecode.coding.attention import coded_attention, coded_heads
from phasecode.coding.baselines import las
from phasecode.coding.neuron import value
from phasecode.conversion import surgery
from phasecode.conversion.handlers import Coder, Observer, Passthrough
from phasecode.conversion.surgery import ATTENTION_KEY, SpikingSurgery
from phasecode.errors import PhasecodeError
from phasecode.models.adapters import Adapter, adapter_for
from phasecode.models.hadamard import OnlineRotation
from phasecode.models.precision import to_float64
from phasecode.models.rotation import rotate_model
from phasecode.models.sites import SPIKING_KINDS, spiking_sites

ARCHS = ["llama", "qwen2", "mistral"]
CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
SIZES = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,  # 32·3: the online rotation needs its odd factor
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16
BATCH, SEQ = 2, 12


def _model(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides) -> nn.Module:
    """A tiny model with random norm gains and biases, so nothing is accidentally an identity."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch](**{**SIZES, **overrides}))
    return randomize_weights(model, seed).to(dtype).eval()


def _tokens(batch: int = BATCH, length: int = SEQ, vocab: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(7))


def _site_names(model: nn.Module, lm_head: bool = True) -> list[str]:
    return [site.name for site in spiking_sites(model, lm_head)]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# ----------------------------------------------------------------------------- passthrough


@pytest.mark.parametrize("arch", ARCHS)
def test_passthrough_equals_eager_attention_exactly(arch):
    model = _model(arch, torch.float64)
    tokens = _tokens()
    reference = eager_logits(model, tokens)
    with SpikingSurgery(model, Passthrough()):
        assert model.config._attn_implementation == ATTENTION_KEY
        got = logits(model, tokens)
    assert torch.equal(got, reference)


def test_passthrough_honours_mistral_sliding_window():
    """The sliding-window mask reaches the phasecode attention (window 4 < 12 tokens)."""
    model = _model("mistral", torch.float64, sliding_window=4)
    full = _model("mistral", torch.float64, sliding_window=None)
    tokens = _tokens()
    reference = eager_logits(model, tokens)
    assert not torch.allclose(reference, eager_logits(full, tokens))  # the window matters
    with SpikingSurgery(model, Passthrough()):
        got = logits(model, tokens)
    assert torch.equal(got, reference)


@pytest.mark.parametrize("arch", ARCHS)
def test_online_down_rotation_restores_the_rotated_model(arch, monkeypatch):
    """rotate_model folds H into down_proj; the surgery's down_rotation applies x·H online.

    Float64 throughout: transformers' RMSNorm (downcasts to float32) is swapped for a float64
    one, and the reference is eager attention, whose softmax runs in float32 like the surgery's.
    """
    model = to_float64(_model(arch))
    tokens = _tokens()
    reference = eager_logits(model, tokens)
    rotate_model(model, seed=3, online_down=True)
    rotation = OnlineRotation(model.config.intermediate_size, seed=3)
    with SpikingSurgery(model, Passthrough()):  # without the online rotation: wrong
        unrotated = logits(model, tokens)
    with SpikingSurgery(model, Passthrough(), down_rotation=rotation):
        got = logits(model, tokens)
    assert (unrotated - reference).abs().max() > 1e-3
    assert (got - reference).abs().max() <= 1e-9


GENERATION = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "mistral": ("mistral", {}),
    "mistral_window": ("mistral", {"sliding_window": 4}),  # the cache keeps the last 4 keys
}


@pytest.mark.parametrize("case", GENERATION)
def test_kv_cache_generation_matches_the_eager_model(case):
    arch, overrides = GENERATION[case]
    model = _model(arch, **overrides)
    prompt = _tokens(2, 8)
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    model.config._attn_implementation = "eager"
    reference = model.generate(prompt, **settings)
    model.config._attn_implementation = "sdpa"
    keys = []

    def recording(site: str, x: torch.Tensor) -> torch.Tensor:
        if site == "layers.0.k":
            keys.append(x.shape[-2])
        return x

    with SpikingSurgery(model, recording):
        got = model.generate(prompt, **settings)
    assert torch.equal(got, reference)
    assert got.shape[1] == 16
    # prefill, then one step per new token that sees the cached keys too
    assert keys[:3] == ([8, 4, 4] if overrides else [8, 9, 10])
    assert model.config._attn_implementation == "sdpa"


# ----------------------------------------------------------------------------- observer


@pytest.mark.parametrize("arch", ARCHS)
def test_handler_sees_every_site_with_its_shape(arch):
    model = _model(arch)
    shapes: dict[str, list[tuple[int, ...]]] = {}

    def recording(site: str, x: torch.Tensor) -> torch.Tensor:
        shapes.setdefault(site, []).append(tuple(x.shape))
        return x

    with SpikingSurgery(model, recording):
        logits(model, _tokens())
    names = _site_names(model)
    assert len(names) == len(SPIKING_KINDS) * 2 + 1
    assert sorted(shapes) == sorted(names)
    assert all(len(seen) == 1 for seen in shapes.values())  # each site read exactly once
    expected = {
        "qkv": (BATCH, SEQ, 64),
        "q": (BATCH, HEADS, SEQ, HEAD_DIM),
        "k": (BATCH, KV_HEADS, SEQ, HEAD_DIM),  # coded before the KV heads are repeated
        "v": (BATCH, KV_HEADS, SEQ, HEAD_DIM),
        "probs": (BATCH, HEADS, SEQ, SEQ),
        "o": (BATCH, SEQ, HEADS * HEAD_DIM),
        "gate_up": (BATCH, SEQ, 64),
        "silu": (BATCH, SEQ, 96),
        "up": (BATCH, SEQ, 96),
        "down": (BATCH, SEQ, 96),
    }
    for layer in range(2):
        for kind, shape in expected.items():
            assert shapes[f"layers.{layer}.{kind}"] == [shape], (layer, kind)
    assert shapes["lm_head"] == [(BATCH, SEQ, 64)]


def test_observer_samples_every_site():
    model = _model("qwen2")
    names = _site_names(model)
    observer = Observer(names, samples=50, seed=0)
    with SpikingSurgery(model, observer):
        reference = eager_logits(model, _tokens())
        got = logits(model, _tokens())
    assert torch.equal(got, reference)
    samples = observer.samples()
    assert sorted(samples) == sorted(names)
    for name, values in samples.items():
        assert values.numel() == 50, name
        assert torch.isfinite(values).all(), name
    probs = samples["layers.0.probs"]
    assert probs.min() >= 0 and probs.max() <= 1
    silu = samples["layers.1.silu"]
    assert silu.min() >= -0.2785  # SiLU's minimum: the observer saw the activation's output


def test_without_lm_head_the_head_input_is_not_a_site():
    model = _model("llama")
    seen = set()

    def recording(site: str, x: torch.Tensor) -> torch.Tensor:
        seen.add(site)
        return x

    with SpikingSurgery(model, recording, lm_head=False):
        logits(model, _tokens())
    assert "lm_head" not in seen
    assert sorted(seen) == sorted(_site_names(model, lm_head=False))


# ----------------------------------------------------------------------------- removal


def _hook_state(model: nn.Module) -> dict[str, tuple]:
    return {
        name: (
            tuple(module._forward_pre_hooks),
            tuple(module._forward_pre_hooks_with_kwargs),
            tuple(module._forward_hooks),
            "forward" in module.__dict__,
            "phasecode_handler" in module.__dict__,
        )
        for name, module in model.named_modules()
    }


def _assert_pristine(model: nn.Module, before: dict, attention: str) -> None:
    assert _hook_state(model) == before
    for name, module in model.named_modules():
        assert not module._forward_pre_hooks, name
        assert "forward" not in module.__dict__, name
        assert not hasattr(module, "phasecode_handler"), name
    assert model.config._attn_implementation == attention


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_remove_restores_the_model(attention):
    model = _model("mistral")
    model.config._attn_implementation = attention
    tokens = _tokens()
    reference = logits(model, tokens)
    before = _hook_state(model)
    surgery = SpikingSurgery(model, Passthrough()).install()
    adapter = adapter_for(model)
    mlp = model.get_submodule(adapter.layer_path(1, adapter.mlp))
    assert "forward" in mlp.__dict__  # the surgery did change the model
    assert _hook_state(model) != before
    surgery.remove()
    _assert_pristine(model, before, attention)
    assert torch.equal(logits(model, tokens), reference)
    surgery.remove()  # idempotent
    _assert_pristine(model, before, attention)


def test_remove_restores_instance_forwards_installed_before():
    """An accelerate hook (it replaces the module's forward on the instance) and a user's own
    instance-level forward survive the surgery exactly, and still run after it."""
    from accelerate.hooks import ModelHook, add_hook_to_module

    class Counting(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Counting.calls += 1
            return args, kwargs

    model = _model("llama")
    tokens = _tokens()
    reference = logits(model, tokens)
    adapter = adapter_for(model)
    hooked = model.get_submodule(adapter.layer_path(0, adapter.mlp))
    add_hook_to_module(hooked, Counting())
    mine = model.get_submodule(adapter.layer_path(1, adapter.mlp))
    original = mine.forward
    mine.forward = lambda x: original(x)
    forwards = (hooked.__dict__["forward"], mine.__dict__["forward"])
    with SpikingSurgery(model, Passthrough()):
        assert hooked.__dict__["forward"] is not forwards[0]
        logits(model, tokens)
    assert (hooked.__dict__["forward"], mine.__dict__["forward"]) == forwards
    calls = Counting.calls
    assert torch.equal(logits(model, tokens), reference)
    assert Counting.calls == calls + 1  # the accelerate hook runs again


def test_remove_restores_an_unset_attention_implementation():
    model = _model("llama")
    model.config._attn_implementation = None  # transformers then falls back to eager
    tokens = _tokens()
    reference = logits(model, tokens)
    with SpikingSurgery(model, Passthrough()):
        logits(model, tokens)
    assert model.config._attn_implementation is None
    assert torch.equal(logits(model, tokens), reference)


def test_remove_after_an_exception_inside_the_block():
    model = _model("llama")
    tokens = _tokens()
    reference = logits(model, tokens)
    before = _hook_state(model)

    def failing(site: str, x: torch.Tensor) -> torch.Tensor:
        if site == "layers.1.silu":
            raise RuntimeError("boom at " + site)
        return x

    with pytest.raises(RuntimeError, match="boom at layers.1.silu"), SpikingSurgery(model, failing):
        logits(model, tokens)
    _assert_pristine(model, before, "sdpa")
    assert torch.equal(logits(model, tokens), reference)


@pytest.mark.parametrize(
    "failing_path",
    ["model.layers.1.mlp", "model.layers.1.self_attn.o_proj", "lm_head"],
)
def test_remove_after_installation_failed_half_way(monkeypatch, failing_path):
    model = _model("qwen2")
    tokens = _tokens()
    reference = logits(model, tokens)
    before = _hook_state(model)
    real_part, real_module = Adapter.part, Adapter.module
    names = {module: name for name, module in model.named_modules()}
    looked_up = []

    def fail_at(path: str) -> None:
        looked_up.append(path)
        if path == failing_path:
            raise PhasecodeError(f"model has no module {path}")

    def flaky_part(self, layer: nn.Module, relative: str) -> nn.Module:
        fail_at(f"{names[layer]}.{relative}")
        return real_part(self, layer, relative)

    def flaky_module(self, root: nn.Module, path: str) -> nn.Module:
        fail_at(path)
        return real_module(self, root, path)

    monkeypatch.setattr(Adapter, "part", flaky_part)
    monkeypatch.setattr(Adapter, "module", flaky_module)
    surgery = SpikingSurgery(model, Passthrough())
    with pytest.raises(PhasecodeError, match=failing_path):
        surgery.install()
    assert len(looked_up) > 3  # layer 0 was fully patched before the failure
    _assert_pristine(model, before, "sdpa")
    assert torch.equal(logits(model, tokens), reference)


def test_unsupported_model_is_refused_before_touching_it():
    model = _model("llama")
    model.config.model_type = "gpt2"
    before = _hook_state(model)
    with pytest.raises(PhasecodeError, match="unsupported model type 'gpt2'"):
        SpikingSurgery(model, Passthrough())
    _assert_pristine(model, before, "sdpa")


# ----------------------------------------------------------------------------- coding


def _site_peaks(model: nn.Module, tokens: torch.Tensor) -> dict[str, float]:
    peaks: dict[str, float] = {}

    def recording(site: str, x: torch.Tensor) -> torch.Tensor:
        peaks[site] = max(peaks.get(site, 0.0), x.abs().max().item())
        return x

    with SpikingSurgery(model, recording):
        logits(model, tokens)
    return peaks


def _las_coder(model: nn.Module, tokens: torch.Tensor, timesteps: int, **kw) -> Coder:
    """LAS neurons on every site, τ = max|x| of that site (×1.01 for headroom)."""
    names = _site_names(model)
    peaks = _site_peaks(model, tokens)
    tau = torch.tensor([1.01 * peaks[name] for name in names])
    return Coder(las(tau, timesteps), names, **kw)


@pytest.fixture(scope="module")
def coding_setup():
    model = _model("llama")
    tokens = _tokens()
    return model, tokens, logits(model, tokens)


def test_fine_coder_is_close_to_the_ann(coding_setup):
    model, tokens, ann = coding_setup
    coder = _las_coder(model, tokens, 24, compiled=False)
    with SpikingSurgery(model, coder):
        coded = logits(model, tokens)
    assert not torch.equal(coded, ann)  # coding did happen
    assert _relative_error(coded, ann) < 1e-4


def test_coarse_coder_changes_the_logits(coding_setup):
    model, tokens, ann = coding_setup
    coder = _las_coder(model, tokens, 2, compiled=False)
    with SpikingSurgery(model, coder):
        coded = logits(model, tokens)
    assert _relative_error(coded, ann) > 0.05


def test_every_site_is_coded_on_its_own(coding_setup):
    """Coding one site at a time (T=2) changes the logits for every site name."""
    model, tokens, ann = coding_setup
    full = _las_coder(model, tokens, 2, compiled=False)
    unchanged = []
    for name, row in full.rows.items():
        single = Coder(row, [name], compiled=False)
        with SpikingSurgery(model, single):
            coded = logits(model, tokens)
        if _relative_error(coded, ann) < 1e-3:
            unchanged.append(name)
    assert len(full.rows) == 21
    assert unchanged == []


def test_coder_codes_only_the_sites_it_is_given(coding_setup):
    """``only`` restricts coding to a subset: none is the ANN, one site is that site's coder."""
    model, tokens, ann = coding_setup
    full = _las_coder(model, tokens, 2, compiled=False)
    names = list(full.rows)
    table = las(torch.full((len(names),), 1.0), 2)
    with SpikingSurgery(model, Coder(table, names, compiled=False, only=())):
        assert _relative_error(logits(model, tokens), ann) < 1e-5  # its attention kernel's rounding
    site = names[3]
    with SpikingSurgery(model, Coder(table, names, compiled=False, only={site})):
        subset = logits(model, tokens)
    with SpikingSurgery(model, Coder(table.select(3), [site], compiled=False)):
        assert torch.equal(logits(model, tokens), subset)
    assert _relative_error(subset, ann) > 1e-3


def test_coder_needs_one_row_per_site(coding_setup):
    model, tokens, _ = coding_setup
    table = las(torch.ones(3), 4)
    with pytest.raises(ValueError, match="3 rows for 2 sites"):
        Coder(table, ["layers.0.q", "layers.0.k"])


def test_compiled_coder_equals_eager_value_bit_exactly(coding_setup, monkeypatch):
    """The fused torch.compile kernel gives the very same logits as step-by-step ``value``."""
    monkeypatch.delenv("PHASECODE_COMPILE", raising=False)
    model, tokens, ann = coding_setup
    compiled = _las_coder(model, tokens, 6, compiled=True)
    rows = compiled.rows

    def eager(site: str, x: torch.Tensor) -> torch.Tensor:
        return value(x.unsqueeze(0), rows[site].to(x.dtype))[0]

    with SpikingSurgery(model, eager):
        reference = logits(model, tokens)
    with SpikingSurgery(model, compiled):
        got = logits(model, tokens)
    assert "value" in neuron._COMPILED  # the compiled kernel really ran
    assert not torch.equal(reference, ann)
    assert torch.equal(got, reference)


# ----------------------------------------------------------------------------- fast paths


def _reference_handler(coder: Coder):
    """The same neurons behind a plain function: the surgery then runs the eager reference
    attention (the S×L softmax handed whole to the probabilities' neuron)."""
    return lambda site, x: coder(site, x)


def test_coder_attention_is_within_rounding_of_the_reference(coding_setup, monkeypatch):
    """Blocks of 2 query rows, each leaving out the keys none of its rows sees: the logits
    agree with the reference to float32 rounding (no probability sits on a threshold here)."""
    model, tokens, _ = coding_setup
    coder = _las_coder(model, tokens, 6, compiled=False)
    with SpikingSurgery(model, _reference_handler(coder)):
        reference = logits(model, tokens)
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return coded_attention(*args, **kwargs)

    monkeypatch.setattr(surgery, "coded_attention", counting)
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", BATCH * HEADS * SEQ * 2)
    with SpikingSurgery(model, coder):
        got = logits(model, tokens)
    assert len(calls) == SIZES["num_hidden_layers"]
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


def _site_by_site(coder: Coder):
    """The coder's neurons called one site at a time (the surgery's generic path)."""
    return lambda site, x: coder(site, x)


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("kinds", [("gate_up", "silu", "up", "down"), ("silu", "down")])
def test_coded_mlp_is_bit_identical_to_site_by_site(coding_setup, balanced, kinds):
    """One call for the whole MLP (coding/mlp.py) with the online rotation, the balancing
    scale and sites without a neuron: the very same values as the site-by-site path."""
    model, tokens, _ = coding_setup
    full = _las_coder(model, tokens, 6, compiled=False)
    names = [name for name in full.rows if name.split(".")[-1] in kinds]
    coder = Coder(las(torch.rand(len(names)) + 0.5, 6), names, compiled=False)
    adapter = adapter_for(model)
    layer = adapter.decoder_layers(model)[0]
    rotation = OnlineRotation(SIZES["intermediate_size"])
    scale = torch.rand(SIZES["intermediate_size"]) + 0.5 if balanced else None
    x = torch.randn(BATCH, SEQ, SIZES["hidden_size"])
    args = (adapter, layer)
    fused = surgery.spiking_mlp_forward(*args, coder, 0, rotation, scale, x)
    reference = surgery.spiking_mlp_forward(*args, _site_by_site(coder), 0, rotation, scale, x)
    analog = surgery.spiking_mlp_forward(*args, Passthrough(), 0, rotation, scale, x)
    assert _relative_error(fused, analog) > 1e-3  # the neurons did code
    assert torch.equal(fused, reference)


@pytest.mark.parametrize("rotated", [False, True])
def test_coded_heads_are_bit_identical_to_site_by_site(coding_setup, rotated):
    """Q, K (rotated per head) and V coded in one call, as three calls would code them."""
    model, tokens, _ = coding_setup
    coder = _las_coder(model, tokens, 6, compiled=False)
    rotation = OnlineRotation(HEAD_DIM) if rotated else None
    query = torch.randn(BATCH, HEADS, SEQ, HEAD_DIM)
    key, value = torch.randn(2, BATCH, KV_HEADS, SEQ + 3, HEAD_DIM).unbind()
    value = value.transpose(2, 3).contiguous().transpose(2, 3)  # strided, as transformers'
    neurons = tuple(coder.fused(f"layers.1.{kind}", query) for kind in ("q", "k", "v"))
    traceable = rotation.traceable(query.device, query.dtype) if rotated else None
    got = coded_heads(query, key, value, traceable, neurons, compiled=False)
    if rotated:
        query, key = rotation(query), rotation(key)
    expected = [
        coder(f"layers.1.{kind}", t) for kind, t in zip("qkv", (query, key, value), strict=True)
    ]
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


def test_coder_generation_with_a_kv_cache_matches_the_reference(coding_setup):
    """Prefill, then one query row per step over a growing cache: the same greedy tokens."""
    model, tokens, _ = coding_setup
    coder = _las_coder(model, tokens, 6, compiled=False)
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with SpikingSurgery(model, _reference_handler(coder)):
        reference = model.generate(tokens[:, :5], **settings)
    with SpikingSurgery(model, coder):
        got = model.generate(tokens[:, :5], **settings)
    assert torch.equal(got, reference)


def test_coder_in_float64_keeps_the_reference_attention(monkeypatch):
    """Float64 models serve exact checks (the simulator's parity): no blocked kernel there."""
    model = to_float64(_model("llama"))
    tokens = _tokens()
    coder = _las_coder(model, tokens, 6, compiled=False)
    monkeypatch.setattr(surgery, "coded_attention", None)  # would raise if called
    with SpikingSurgery(model, coder):
        got = logits(model, tokens)
    with SpikingSurgery(model, _reference_handler(coder)):
        assert torch.equal(got, logits(model, tokens))


@pytest.mark.parametrize("arch", ARCHS)
def test_passthrough_in_float32_is_sdpa_within_rounding(arch):
    """The plain prepared ANN runs SDPA and skips the head rotation ((QH)(KH)ᵀ = QKᵀ)."""
    model = _model(arch)
    tokens = _tokens()
    reference = eager_logits(model, tokens)
    rotation = OnlineRotation(HEAD_DIM, seed=1)
    with SpikingSurgery(model, Passthrough(), head_rotation=rotation):
        got = logits(model, tokens)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
