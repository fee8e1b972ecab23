"""One adapter per architecture: where a model keeps the modules phasecode works on.

The conversion never copies a modeling file: it reads and patches transformers' own modules,
so all it needs to know about an architecture is this table of names. LLaMA (SmolLM2,
LLaMA-2/3), Qwen2 (q/k/v biases) and Mistral (sliding-window masks, applied by transformers
before attention) share one layout; an architecture with fused projections would subclass
``Adapter`` and override the accessors.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from phasecode.errors import PhasecodeError


@dataclass(frozen=True)
class Adapter:
    """Qualified module names of a decoder-only causal LM of the LLaMA family."""

    model_type: str
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    attention: str = "self_attn"
    mlp: str = "mlp"
    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    o: str = "self_attn.o_proj"
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return submodule(model, self.layers)

    def layer_path(self, index: int, relative: str) -> str:
        """Qualified name of a module inside decoder layer ``index``."""
        return f"{self.layers}.{index}.{relative}"

    def num_layers(self, model: nn.Module) -> int:
        return len(self.decoder_layers(model))


ADAPTERS: dict[str, Adapter] = {name: Adapter(name) for name in ("llama", "qwen2", "mistral")}


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for a model's ``config.model_type``, or a clear error listing the supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        supported = ", ".join(sorted(ADAPTERS))
        raise PhasecodeError(f"unsupported model type {model_type!r}; supported: {supported}")
    return ADAPTERS[model_type]


def submodule(model: nn.Module, path: str) -> nn.Module:
    """get_submodule with an error that says which module the adapter expected."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise PhasecodeError(f"model has no module {path}; is it a causal LM?") from exc
