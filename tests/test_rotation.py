"""Rotations remove outliers without changing what the model computes."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, Qwen2Config

from phasecode.errors import PhasecodeError
from phasecode.models.rotation import (
    apply_online_down,
    fold_down_rotation,
    fuse_norms,
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
        _randomize(model, seed)
        if dtype == torch.float64:
            for norm in _rms_norms(model):
                monkeypatch.setattr(type(norm), "forward", _rms_norm_in_input_dtype)
        return model.to(dtype).eval()

    return make


@torch.no_grad()
def _randomize(model: nn.Module, seed: int) -> None:
    """Freshly initialised norms have γ = 1 and biases 0, which would hide fusion bugs."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.normal_(0, module.in_features**-0.5, generator=gen)
            if module.bias is not None:
                module.bias.normal_(0, 0.1, generator=gen)
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0, 1, generator=gen)
    for norm in _rms_norms(model):
        norm.weight.uniform_(0.5, 1.5, generator=gen)


def _rms_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]


def _rms_norm_in_input_dtype(self: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return self.weight * hidden * torch.rsqrt(variance + self.variance_epsilon)


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


def _full_rotation(model: nn.Module) -> None:
    state = rotate_model(model, seed=3)
    apply_online_down(model, state.down)


STEPS = {
    "fuse": fuse_norms,
    "residual": lambda model: (fuse_norms(model), rotate_residual(model, seed=3)),
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
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
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
    states = [rotate_model(first, seed=3), rotate_model(second, seed=3), rotate_model(other, 4)]
    assert states[0] == states[1] != states[2]
    assert torch.equal(states[0].down, states[1].down)
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


def test_online_down_hooks_are_removable(build):
    model = build("llama")
    tokens = _tokens()
    reference = _logits(model, tokens)
    fuse_norms(model)
    rotate_residual(model)
    with apply_online_down(model, fold_down_rotation(model)):
        torch.testing.assert_close(_logits(model, tokens), reference, rtol=0, atol=1e-10)
    assert not torch.allclose(_logits(model, tokens), reference)


def test_rotating_unfused_norms_is_refused(build):
    with pytest.raises(PhasecodeError, match="fuse_norms"):
        rotate_residual(build("llama"))
