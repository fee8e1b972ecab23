"""Activation sites: the tensors at which spiking neurons replace analog activations."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from phasecode.errors import PhasecodeError


@dataclass(frozen=True)
class Site:
    """One activation tensor; `modules` all consume it, and the first is where it is read."""

    name: str
    kind: str
    layer: int
    modules: tuple[str, ...]


# Per architecture: where the decoder layers live, and per site kind the linears (relative to a
# decoder layer) that share its input. LLaMA, Qwen2 and Mistral share the LLaMA layout.
_LLAMA_LAYOUT: tuple[str, dict[str, tuple[str, ...]]] = (
    "model.layers",
    {
        "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "o": ("self_attn.o_proj",),
        "gate_up": ("mlp.gate_proj", "mlp.up_proj"),
        "down": ("mlp.down_proj",),
    },
)
_LAYOUTS = {"llama": _LLAMA_LAYOUT, "qwen2": _LLAMA_LAYOUT, "mistral": _LLAMA_LAYOUT}


def linear_input_sites(model: nn.Module) -> list[Site]:
    """The input of every linear in the decoder layers, one site per distinct input tensor."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _LAYOUTS:
        supported = ", ".join(sorted(_LAYOUTS))
        raise PhasecodeError(f"unsupported model type {model_type!r}; supported: {supported}")
    layers_path, kinds = _LAYOUTS[model_type]
    layers = _submodule(model, layers_path)
    sites = []
    for i in range(len(layers)):
        for kind, linears in kinds.items():
            modules = tuple(f"{layers_path}.{i}.{linear}" for linear in linears)
            for module in modules:
                _submodule(model, module)  # fail early, naming the module, if the layout is off
            sites.append(Site(f"layers.{i}.{kind}", kind, i, modules))
    return sites


def _submodule(model: nn.Module, path: str) -> nn.Module:
    """get_submodule with an error that says which module the layout expected."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise PhasecodeError(f"model has no module {path}; is it a causal LM?") from exc
