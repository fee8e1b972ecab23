"""Activation sites: the tensors at which spiking neurons replace analog activations."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from phasecode.models.adapters import ATTENTION, MLP, adapter_for

LM_HEAD = "lm_head"


@dataclass(frozen=True)
class Site:
    """One activation tensor; `modules` all consume it, and the first is where it is read."""

    name: str
    kind: str
    layer: int
    modules: tuple[str, ...]


@dataclass(frozen=True)
class SiteKey:
    """Which activation a site is: its decoder layer (None for the lm_head input) and kind.
    Artifacts, reports and handlers carry its ``name``; only this class writes or reads it."""

    layer: int | None
    kind: str

    @property
    def name(self) -> str:
        return LM_HEAD if self.layer is None else f"layers.{self.layer}.{self.kind}"

    @classmethod
    def parse(cls, name: str) -> SiteKey:
        if name == LM_HEAD:
            return cls(None, LM_HEAD)
        head, layer, kind = name.split(".")
        if head != "layers" or not layer.isdigit():
            raise ValueError(f"not a site name: {name!r}")
        return cls(int(layer), kind)


def site_name(layer: int | None, kind: str) -> str:
    """The name of a site, e.g. ``layers.3.down`` (``lm_head`` for layer None)."""
    return SiteKey(layer, kind).name


def site_kind(name: str) -> str:
    """The kind of a site name (``qkv``, …, ``lm_head``)."""
    return SiteKey.parse(name).kind


def linear_input_sites(model: nn.Module) -> list[Site]:
    """The input of every linear in the decoder layers, one site per distinct input tensor."""
    adapter = adapter_for(model)
    kinds = {
        "qkv": adapter.readers(ATTENTION),
        "o": (adapter.o,),
        "gate_up": adapter.readers(MLP),
        "down": (adapter.down,),
    }
    for names in kinds.values():
        adapter.linears(model, names)  # fail early, naming the module, if the layout is off
    return [
        Site(site_name(i, kind), kind, i, tuple(adapter.layer_path(i, n) for n in names))
        for i in range(adapter.num_layers(model))
        for kind, names in kinds.items()
    ]


# Site kinds of the full spiking model (paper Fig. 2 right, App. B), per decoder layer, in the
# order a token meets them. `where` is the module (relative to the layer) that reads the site.
SPIKING_KINDS: dict[str, str] = {
    "qkv": "attention",  # input of q/k/v_proj (shared)
    "q": "attention",  # queries after RoPE (operand of Q·Kᵀ, Eq. 50-51)
    "k": "attention",  # keys after RoPE (per KV head)
    "v": "attention",  # values (operand of P·V)
    "probs": "attention",  # attention probabilities after softmax
    "o": "o",  # input of o_proj
    "gate_up": "mlp",  # input of gate/up_proj (shared)
    "silu": "mlp",  # SiLU(gate): one operand of the product (Eq. 55)
    "up": "mlp",  # up_proj output: the other operand
    "down": "mlp",  # input of down_proj (the product, after the online rotation)
}


def spiking_sites(model: nn.Module, lm_head: bool = True) -> list[Site]:
    """Every site of the spiking model: ten per decoder layer, plus the lm_head input."""
    adapter = adapter_for(model)
    for where in set(SPIKING_KINDS.values()):
        adapter.per_layer(model, getattr(adapter, where))  # fail early if the layout is off
    sites = [
        Site(site_name(i, kind), kind, i, (adapter.layer_path(i, getattr(adapter, where)),))
        for i in range(adapter.num_layers(model))
        for kind, where in SPIKING_KINDS.items()
    ]
    if lm_head:
        adapter.module(model, adapter.lm_head)
        sites.append(Site(LM_HEAD, LM_HEAD, adapter.num_layers(model), (adapter.lm_head,)))
    return sites
