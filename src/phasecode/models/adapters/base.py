"""The adapter: the one place that knows where a model keeps the modules phasecode works on.

The conversion never copies a modeling file: it reads and patches transformers' own modules.
Everything it needs to know about an architecture — module names, the rotary embedding and
its ``apply_rotary_pos_emb``, the MLP's activation, which layers use a sliding window — is
answered here, so adding an architecture is one file in this package that builds an
``Adapter`` (overriding methods where the layout differs, e.g. fused projections).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from phasecode.errors import PhasecodeError


@dataclass(frozen=True)
class Adapter:
    """Qualified module names of a decoder-only causal LM of the LLaMA family.

    Paths of per-layer modules (``q``, ``gate``, ``input_norm``, …) are relative to a decoder
    layer; ``layers``, ``embed``, ``final_norm``, ``lm_head`` and ``rotary`` to the model.
    """

    model_type: str
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    rotary: str = "model.rotary_emb"
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
    activation: str = "mlp.act_fn"
    # a sliding window on every layer when the config has no per-layer ``layer_types``
    window_on_all_layers: bool = False

    # -- module access ----------------------------------------------------------------------

    def module(self, model: nn.Module, path: str) -> nn.Module:
        """A model-level module (``embed``, ``lm_head``, …) with an error naming it."""
        return submodule(model, path)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return submodule(model, self.layers)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.decoder_layers(model))

    def layer_path(self, index: int, relative: str) -> str:
        """Qualified name of a module inside decoder layer ``index``."""
        return f"{self.layers}.{index}.{relative}"

    def part(self, layer: nn.Module, relative: str) -> nn.Module:
        """A module of one decoder layer, by its path relative to the layer."""
        return submodule(layer, relative)

    def layer_module(self, model: nn.Module, index: int, relative: str) -> nn.Module:
        return submodule(model, self.layer_path(index, relative))

    def per_layer(self, model: nn.Module, relative: str) -> list[nn.Module]:
        """The module at ``relative`` in every decoder layer, in layer order."""
        return [self.layer_module(model, i, relative) for i in range(self.num_layers(model))]

    def linears(self, model: nn.Module, names: Sequence[str]) -> list[nn.Linear]:
        """Every layer's modules at ``names`` (layer-major), e.g. all q/k/v projections."""
        return [
            self.layer_module(model, i, name)
            for i in range(self.num_layers(model))
            for name in names
        ]

    # -- architecture behaviour -------------------------------------------------------------

    def act_fn(self, layer: nn.Module) -> Callable:
        """The MLP's gate activation (SiLU in the LLaMA family) of one decoder layer."""
        return self.part(layer, self.activation)

    def rotary_embedding(self, model: nn.Module) -> nn.Module:
        """The module computing (cos, sin) for given positions."""
        return submodule(model, self.rotary)

    def apply_rope(self, model: nn.Module) -> Callable:
        """The modeling module's own ``apply_rotary_pos_emb(q, k, cos, sin)``."""
        attention = self.layer_module(model, 0, self.attention)
        module = sys.modules[type(attention).__module__]
        rope = getattr(module, "apply_rotary_pos_emb", None)
        if rope is None:
            raise PhasecodeError(f"{module.__name__} has no apply_rotary_pos_emb")
        return rope

    def sliding_window(self, config, layer: int) -> int | None:
        """The layer's attention window as transformers applies it (None: full causal)."""
        window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None:
            return window if layer_types[layer] == "sliding_attention" else None
        return window if self.window_on_all_layers else None

    def head_dim(self, config) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def submodule(model: nn.Module, path: str) -> nn.Module:
    """get_submodule with an error that says which module the adapter expected."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise PhasecodeError(f"model has no module {path}; is it a causal LM?") from exc
