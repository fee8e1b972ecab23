"""The adapter: the one place that knows a model's decoder block, by structure and by name.

The conversion never copies a modeling file: it reads and patches transformers' own modules.
Everything it needs to know about an architecture is answered here:

- where each RMSNorm sits: before a branch (a *pre-norm*, foldable into the linears reading
  it), on a branch's output before the residual add (a *post-norm*: Gemma 3, OLMo 2), or both;
  the norm's gain convention (``weight`` or Gemma's ``1 + weight``);
- q/k norms inside attention (per head, or over the whole projection as in OLMo 2);
- the projections, separate or fused (Phi-3's ``qkv_proj`` and ``gate_up_proj``), as
  ``Projection`` row blocks of one linear;
- the MLP's activation (SiLU, GELU-tanh, …) and the rotary embedding, with one table per
  layer type where the model has several (Gemma 3's local and global layers);
- architecture features phasecode cannot run exactly (logit soft-capping), refused up front.

Rotation, surgery, quantization, balancing, calibration, the prefix choice, the simulator
and the energy counts read the block from here, so adding an architecture is one file in
this package that builds an ``Adapter`` (docs/architecture.md walks through Qwen3).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from phasecode.errors import PhasecodeError

ATTENTION, MLP = "attention", "mlp"  # the two branches of a decoder block
# config.hidden_act values, by the element-wise function phasecode counts for them
ACTIVATION_KINDS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_new": "gelu",
    "gelu": "gelu",
}


@dataclass(frozen=True)
class Projection:
    """Rows ``rows`` of ``linear``: one of q/k/v or gate/up, its own linear or a block of a
    fused one. It reads like an ``nn.Linear`` (weight, bias, features), through views, so an
    update of its weight writes into the model."""

    linear: nn.Linear
    rows: slice

    @property
    def weight(self) -> Tensor:
        return self.linear.weight[self.rows]

    @property
    def bias(self) -> Tensor | None:
        bias = self.linear.bias
        return None if bias is None else bias[self.rows]

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return len(range(*self.rows.indices(self.linear.out_features)))

    def __call__(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


@dataclass(frozen=True)
class Adapter:
    """The decoder block of a causal LM, as module paths and structural facts.

    Paths of per-layer modules are relative to a decoder layer; ``layers``, ``embed``,
    ``final_norm``, ``lm_head`` and ``rotary`` to the model. A norm path of None means the
    block has no norm there. ``qkv`` / ``gate_up`` name fused projections; when set, ``q``,
    ``k``, ``v`` / ``gate``, ``up`` are ignored.
    """

    model_type: str
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    rotary: str = "model.rotary_emb"
    attention: str = "self_attn"
    mlp: str = "mlp"
    # norms, relative to the layer: before each branch, and on each branch's output
    attention_norm: str | None = "input_layernorm"
    attention_post_norm: str | None = None
    mlp_norm: str | None = "post_attention_layernorm"
    mlp_post_norm: str | None = None
    norm_offset: float = 0.0  # the RMSNorm's gain is weight + offset (Gemma: 1)
    q_norm: str | None = None  # RMSNorm of the queries / keys before RoPE (Qwen3, Gemma 3, …)
    k_norm: str | None = None
    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    qkv: str | None = None  # a fused q/k/v projection (Phi-3)
    o: str = "self_attn.o_proj"
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    gate_up: str | None = None  # a fused gate/up projection, gate rows first (Phi-3)
    down: str = "mlp.down_proj"
    activation: str = "mlp.act_fn"
    # a sliding window on every layer when the config has no per-layer ``layer_types``
    window_on_all_layers: bool = False
    # the rotary module takes the layer type and keeps one table per type (Gemma 3)
    rope_per_layer_type: bool = False

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

    # -- the block's structure --------------------------------------------------------------

    def readers(self, branch: str) -> tuple[str, ...]:
        """The linears reading a branch's input (the fused one, or each)."""
        if branch == ATTENTION:
            return (self.qkv,) if self.qkv else (self.q, self.k, self.v)
        return (self.gate_up,) if self.gate_up else (self.gate, self.up)

    def projection_names(self, branch: str) -> tuple[str, ...]:
        """The module of each of q, k, v (or gate, up): the fused one's, repeated, if fused."""
        readers = self.readers(branch)
        return readers * (3 if branch == ATTENTION else 2) if len(readers) == 1 else readers

    def writer(self, branch: str) -> str:
        """The linear writing a branch's output (before its post-norm, if any)."""
        return self.o if branch == ATTENTION else self.down

    def pre_norm(self, branch: str) -> str | None:
        return self.attention_norm if branch == ATTENTION else self.mlp_norm

    def post_norm(self, branch: str) -> str | None:
        return self.attention_post_norm if branch == ATTENTION else self.mlp_post_norm

    @property
    def post_norms(self) -> tuple[str, ...]:
        """The block's post-norms (empty for the LLaMA layout)."""
        return tuple(n for n in (self.attention_post_norm, self.mlp_post_norm) if n)

    def decoder_linears(self) -> tuple[str, ...]:
        """Every linear of a decoder block, fused ones once."""
        return (*self.readers(ATTENTION), self.o, *self.readers(MLP), self.down)

    def attention_projections(self, model: nn.Module, layer: nn.Module) -> tuple[Projection, ...]:
        """q, k and v of one layer as ``Projection`` s (row blocks of ``qkv`` when fused)."""
        if not self.qkv:
            return tuple(_whole(self.part(layer, name)) for name in (self.q, self.k, self.v))
        config, head_dim = model.config, self.head_dim(model.config)
        q_rows = config.num_attention_heads * head_dim
        kv_rows = config.num_key_value_heads * head_dim
        fused = self.part(layer, self.qkv)
        bounds = (0, q_rows, q_rows + kv_rows, q_rows + 2 * kv_rows)
        if fused.out_features != bounds[-1]:
            raise PhasecodeError(
                f"{self.qkv} has {fused.out_features} outputs, expected {bounds[-1]} (q, k, v)"
            )
        return tuple(Projection(fused, slice(a, b)) for a, b in itertools.pairwise(bounds))

    def mlp_projections(self, layer: nn.Module) -> tuple[Projection, Projection]:
        """gate and up of one layer (row halves of ``gate_up`` when fused)."""
        if not self.gate_up:
            return _whole(self.part(layer, self.gate)), _whole(self.part(layer, self.up))
        fused = self.part(layer, self.gate_up)
        half = fused.out_features // 2
        return Projection(fused, slice(0, half)), Projection(fused, slice(half, 2 * half))

    def norm_gain(self, norm: nn.Module) -> Tensor:
        """The multiplier a norm applies after normalising (weight + offset)."""
        return norm.weight + self.norm_offset

    def set_unit_gain(self, norm: nn.Module) -> None:
        """Make the norm's gain 1 (after folding it into its readers)."""
        with torch.no_grad():
            norm.weight.fill_(1.0 - self.norm_offset)

    def qk_norms(self, layer: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
        """The layer's q and k norms (None where the architecture has none)."""
        q, k = (self.part(layer, name) if name else None for name in (self.q_norm, self.k_norm))
        return q, k

    # -- architecture behaviour -------------------------------------------------------------

    def check(self, config) -> None:
        """Refuse what phasecode cannot run exactly, in one line (called on conversion)."""
        for name in ("attn_logit_softcapping", "final_logit_softcapping"):
            if getattr(config, name, None) is not None:
                raise PhasecodeError(
                    f"{self.model_type}: {name} is not supported (a tanh of the logits has no "
                    "exact spiking form here)"
                )
        if getattr(config, "use_bidirectional_attention", False):
            raise PhasecodeError(f"{self.model_type}: bidirectional attention is not supported")
        self.activation_kind(config)

    def activation_kind(self, config) -> str:
        """The MLP activation as the energy counts name it (``silu`` or ``gelu``)."""
        name = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")
        if name not in ACTIVATION_KINDS:
            supported = ", ".join(sorted(ACTIVATION_KINDS))
            raise PhasecodeError(f"activation {name!r} is not supported; supported: {supported}")
        return ACTIVATION_KINDS[name]

    def act_fn(self, layer: nn.Module) -> Callable:
        """The MLP's gate activation (SiLU in the LLaMA family) of one decoder layer."""
        return self.part(layer, self.activation)

    def scales_embedding(self, model: nn.Module) -> bool:
        """Whether the embedding module multiplies its rows by a factor (Gemma: √hidden)."""
        return getattr(self.module(model, self.embed), "embed_scale", None) is not None

    def rotary_embedding(self, model: nn.Module) -> nn.Module:
        """The module computing (cos, sin) for given positions."""
        return submodule(model, self.rotary)

    def rotary_tables(self, model: nn.Module, x: Tensor, position_ids: Tensor) -> list[tuple]:
        """(cos, sin) for every decoder layer, as the model's own forward computes them."""
        rotary, layers = self.rotary_embedding(model), self.num_layers(model)
        if not self.rope_per_layer_type:
            return [rotary(x, position_ids)] * layers
        types = model.config.layer_types[:layers]
        tables = {kind: rotary(x, position_ids, kind) for kind in dict.fromkeys(types)}
        return [tables[kind] for kind in types]

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


def _whole(linear: nn.Linear) -> Projection:
    return Projection(linear, slice(0, linear.out_features))


def submodule(model: nn.Module, path: str) -> nn.Module:
    """get_submodule with an error that says which module the adapter expected."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise PhasecodeError(f"model has no module {path}; is it a causal LM?") from exc
