"""Rotations remove outliers without changing what the model computes."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from helpers import randomize_weights
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, Qwen2Config

from phasecode.errors import PhasecodeError
from phasecode.models import rotation as rotation_module
from phasecode.models.hadamard import OnlineRotation, hadamard_rotation
from phasecode.models.precision import to_float64
from phasecode.models.rotation import (
    fold_down_rotation,
    fold_value_rotation,
    fuse_norms,
    head_rotation,
    rotate_model,
    rotate_residual,
)

# 48 = 16·3 and 80 = 16·5 need the seeded odd factor; head_dim = 12.
ODD_SIZES = dict(
    vocab_size=128,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
MODELS = ["llama", "qwen2", "mistral", "odd_widths", "tied"]


@pytest.fixture
def build(tiny_model, monkeypatch) -> Callable[..., PreTrainedModel]:
    """Factory: a model by name, with random gains, biases and O(1) logits, in any dtype.

    transformers' RMSNorm always normalises in float32, which for a float64 model is a downcast
    that would bound every float64 check at ~1e-7; float64 models get a float64 RMSNorm.
    """

    def make(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> PreTrainedModel:
        if name == "odd_widths":  # Qwen2: q/k/v biases too
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(Qwen2Config(**ODD_SIZES))
        elif name == "tied":
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(
                LlamaConfig(**ODD_SIZES, tie_word_embeddings=True)
            )
        else:
            model = tiny_model(name, seed=seed)
        randomize_weights(model, seed)
        if dtype == torch.float64:
            return to_float64(model).eval()
        return model.to(dtype).eval()

    return make


def _rms_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]


def _tokens(batch: int = 2, length: int = 16) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def _logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens).logits


def _perplexity(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    loss = nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).double(), tokens[:, 1:].flatten()
    )
    return loss.exp().item()


def _online_down(model: nn.Module, rotation: OnlineRotation) -> list[RemovableHandle]:
    """Rotate every down_proj input online, x ↦ x·H, so a folded model runs standalone."""
    return [
        layer.mlp.down_proj.register_forward_pre_hook(
            lambda _, args: (rotation(args[0]), *args[1:])
        )
        for layer in model.model.layers
    ]


def _full_rotation(model: nn.Module) -> None:
    rotation = rotate_model(model, seed=3)
    fold_value_rotation(model, seed=3)
    _online_down(model, rotation)


STEPS = {
    "fuse": fuse_norms,
    "residual": lambda model: (fuse_norms(model), rotate_residual(model, seed=3)),
    "down": lambda model: _online_down(model, rotate_model(model, seed=3)),
    "value": lambda model: fold_value_rotation(model, seed=3),
    "full": _full_rotation,
}


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("name", MODELS)
def test_rotation_preserves_logits_float64(build, name, step):
    model = build(name)
    tokens = _tokens()
    reference = _logits(model, tokens)
    STEPS[step](model)
    error = (_logits(model, tokens) - reference).abs().max()
    assert error <= 1e-10 * reference.abs().max()


@pytest.mark.parametrize("name", MODELS)
def test_rotation_preserves_perplexity_float32(build, name):
    model = build(name, torch.float32)
    tokens = _tokens()
    reference = _perplexity(_logits(model, tokens), tokens)
    _full_rotation(model)
    rotated = _perplexity(_logits(model, tokens), tokens)
    assert abs(rotated / reference - 1) <= 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_fused_norms_are_ones(build, name):
    model = build(name)
    fuse_norms(model)
    norms = _rms_norms(model)
    assert len(norms) == 2 * 2 + 1
    assert all(torch.all(norm.weight == 1) for norm in norms)


def test_tied_embeddings_are_untied_and_survive_reload(build, tmp_path):
    model = build("tied")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tokens = _tokens()
    reference = _logits(model, tokens)
    fuse_norms(model)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert not model.config.tie_word_embeddings
    model.tie_weights()  # recomputes the tying plan from the config: must not tie again
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    rotate_residual(model, seed=3)
    model.save_pretrained(tmp_path)
    reloaded = to_float64(AutoModelForCausalLM.from_pretrained(tmp_path)).eval()
    assert reloaded.lm_head.weight is not reloaded.model.embed_tokens.weight
    torch.testing.assert_close(_logits(reloaded, tokens), reference, rtol=0, atol=1e-10)


OUTLIERS = {  # one residual channel of the embedding, and how far it stands out at q_proj
    "scaled": (lambda column: column * 100, 4),
    "massive": (lambda column: torch.full_like(column, 100), 20),  # near-constant, as in LLMs
}


@pytest.mark.parametrize("outlier", OUTLIERS)
def test_rotation_spreads_an_outlier_channel(build, outlier):
    make_outlier, min_before = OUTLIERS[outlier]
    model = build("llama", torch.float32)
    embedding = model.model.embed_tokens.weight
    with torch.no_grad():
        embedding[:, 5] = make_outlier(embedding[:, 5])
    tokens = _tokens(4, 32)

    def peak_over_median() -> float:
        seen = []
        q_proj = model.model.layers[0].self_attn.q_proj
        handle = q_proj.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        _logits(model, tokens)
        handle.remove()
        peaks = seen[0].abs().flatten(0, 1).amax(0)  # per channel, over all tokens
        return (peaks.max() / peaks.median()).item()

    before = peak_over_median()
    _full_rotation(model)
    after = peak_over_median()
    assert before > min_before
    assert after < 2
    assert after < before / 3


def test_rotation_is_deterministic_in_the_seed(build):
    first, second, other = (build("odd_widths") for _ in range(3))
    rotations = [rotate_model(first, seed=3), rotate_model(second, seed=3), rotate_model(other, 4)]
    assert torch.equal(rotations[0].matrix(), rotations[1].matrix())
    assert not torch.equal(rotations[0].matrix(), rotations[2].matrix())
    assert rotate_model(build("llama"), online_down=False) is None
    for (key, a), b, c in zip(
        first.state_dict().items(),
        second.state_dict().values(),
        other.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), key
        if key.endswith("down_proj.weight"):
            assert not torch.equal(a, c), key


def test_rotated_model_generates_the_same_tokens_with_a_kv_cache(build):
    original = build("qwen2")
    rotated = copy.deepcopy(original)
    _full_rotation(rotated)
    prompt = _tokens(1, 6)
    kwargs = dict(max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
    expected = original.generate(prompt, **kwargs)
    assert expected.shape[1] == 6 + 5
    assert torch.equal(rotated.generate(prompt, **kwargs), expected)


def test_folded_down_rotation_needs_the_online_rotation(build):
    model = build("llama")
    tokens = _tokens()
    reference = _logits(model, tokens)
    fuse_norms(model)
    rotate_residual(model)
    rotation = fold_down_rotation(model)
    assert not torch.allclose(_logits(model, tokens), reference)
    _online_down(model, rotation)
    torch.testing.assert_close(_logits(model, tokens), reference, rtol=0, atol=1e-10)


def test_rotating_unfused_norms_is_refused(build):
    with pytest.raises(PhasecodeError, match="fuse_norms"):
        rotate_residual(build("llama"))


def _dense_rows(weight: torch.Tensor, width: int, seed: int) -> torch.Tensor:
    return weight.double() @ hadamard_rotation(width, seed, torch.float64)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("width", [96, 1536])
def test_chunked_fold_matches_the_dense_product(monkeypatch, width, fast):
    """W·H and Rᵀ·W through the Kronecker factors, a few rows (columns) at a time, equal the
    dense products up to float64 rounding, and round to the same float32 weights."""
    monkeypatch.setattr(rotation_module, "CHUNK_BYTES", 8 * width * 5)  # 5 lines per block
    rotation = OnlineRotation(width, seed=2, fast=fast)
    dense = hadamard_rotation(width, 2, torch.float64)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(37, width, generator=gen, dtype=torch.float64)
    rows, columns = weight.clone(), weight.T.clone()
    rotation_module._rewrite_rows(rows, rotation)
    rotation_module._rewrite_columns(columns, rotation)
    for folded, expected in ((rows, weight @ dense), (columns, dense.T @ weight.T)):
        assert (folded - expected).abs().max() <= 1e-12 * expected.abs().max()
    single = weight.float()
    expected = (single.double() @ dense).float()
    rotation_module._rewrite_rows(single, rotation)
    assert (single != expected).float().mean() <= 1e-3  # a tie broken the other way, at most
    torch.testing.assert_close(single, expected, rtol=2**-23, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fold_of_low_precision_weights_rounds_once(tiny_model, dtype):
    model = tiny_model("llama").to(dtype)
    before = [layer.mlp.down_proj.weight.clone() for layer in model.model.layers]
    fold_down_rotation(model, seed=1)
    for layer, weight in zip(model.model.layers, before, strict=True):
        folded = layer.mlp.down_proj.weight
        assert folded.dtype == dtype
        expected = _dense_rows(weight, weight.shape[1], 1).to(dtype)
        assert (folded != expected).float().mean() <= 1e-3


def test_model_rotation_does_not_depend_on_the_block_size(build, monkeypatch):
    reference, chunked = build("odd_widths"), build("odd_widths")
    rotate_model(reference, seed=3)
    fold_value_rotation(reference, seed=3)
    monkeypatch.setattr(rotation_module, "CHUNK_BYTES", 1)  # one row or column at a time
    rotate_model(chunked, seed=3)
    fold_value_rotation(chunked, seed=3)
    pairs = zip(reference.state_dict().items(), chunked.state_dict().values(), strict=True)
    for (key, a), b in pairs:
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral", "odd_widths"])
def test_value_rotation_rotates_each_value_head(build, name):
    """v_proj now outputs v·H per KV head (bias included), by the formula of the docstring."""
    model = build(name)
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    x = torch.randn(5, config.hidden_size, dtype=torch.float64)
    v_proj = model.model.layers[1].self_attn.v_proj
    before = v_proj(x).reshape(5, -1, head_dim)
    fold_value_rotation(model, seed=3)
    h = hadamard_rotation(head_dim, 3, torch.float64)
    after = v_proj(x).reshape(5, -1, head_dim)
    torch.testing.assert_close(after, before @ h, rtol=0, atol=1e-12)
    assert not torch.allclose(after, before)


@pytest.mark.parametrize("head_dim", [64, 128, 12])
def test_head_rotation_keeps_attention_scores(head_dim):
    """(Q·H)(K·H)ᵀ = Q·Kᵀ per head, with GQA's K heads repeated for the query groups."""
    rotation = head_rotation(head_dim, seed=3)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 7, head_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 2, 7, head_dim, generator=gen, dtype=torch.float64)
    k[..., 3] += 50.0  # an outlier channel, as in LLM keys
    scores = q @ k.repeat_interleave(2, 1).transpose(-1, -2)
    rotated = rotation(q) @ rotation(k).repeat_interleave(2, 1).transpose(-1, -2)
    torch.testing.assert_close(rotated, scores, rtol=0, atol=1e-12 * scores.abs().max().item())
    assert rotation(k)[..., 3].abs().max() < k[..., 3].abs().max() / 2
    assert rotation(q.float()).dtype == torch.float32


def _rotate_all_but_norms(model: nn.Module) -> None:
    fold_down_rotation(model, seed=3)
    fold_value_rotation(model, seed=3)


DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_folds_stay_on_the_weights_device(tiny_model, device):
    """Nothing is created on the CPU: a mixed-device product would raise (also on "meta")."""
    model = tiny_model("qwen2").to(device)
    _rotate_all_but_norms(model)
    for key, tensor in model.state_dict().items():
        assert tensor.device.type == device, key
    if device == "cuda":  # the numbers match a CPU fold
        cpu = tiny_model("qwen2")
        _rotate_all_but_norms(cpu)
        pairs = zip(cpu.state_dict().items(), model.state_dict().values(), strict=True)
        for (key, a), b in pairs:
            torch.testing.assert_close(b.cpu(), a, rtol=1e-6, atol=1e-7, msg=key)
