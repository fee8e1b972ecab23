"""Activation sites: the tensors at which spiking neurons replace analog activations."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from phasecode.models.adapters import adapter_for, submodule


@dataclass(frozen=True)
class Site:
    """One activation tensor; `modules` all consume it, and the first is where it is read."""

    name: str
    kind: str
    layer: int
    modules: tuple[str, ...]


def linear_input_sites(model: nn.Module) -> list[Site]:
    """The input of every linear in the decoder layers, one site per distinct input tensor."""
    adapter = adapter_for(model)
    kinds = {
        "qkv": (adapter.q, adapter.k, adapter.v),
        "o": (adapter.o,),
        "gate_up": (adapter.gate, adapter.up),
        "down": (adapter.down,),
    }
    sites = []
    for i in range(adapter.num_layers(model)):
        for kind, linears in kinds.items():
            modules = tuple(adapter.layer_path(i, linear) for linear in linears)
            for module in modules:
                submodule(model, module)  # fail early, naming the module, if the layout is off
            sites.append(Site(f"layers.{i}.{kind}", kind, i, modules))
    return sites


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
LM_HEAD = "lm_head"


def spiking_sites(model: nn.Module, lm_head: bool = True) -> list[Site]:
    """Every site of the spiking model: ten per decoder layer, plus the lm_head input."""
    adapter = adapter_for(model)
    sites = []
    for i in range(adapter.num_layers(model)):
        for kind, where in SPIKING_KINDS.items():
            module = adapter.layer_path(i, getattr(adapter, where))
            submodule(model, module)
            sites.append(Site(f"layers.{i}.{kind}", kind, i, (module,)))
    if lm_head:
        submodule(model, adapter.lm_head)
        sites.append(Site(LM_HEAD, LM_HEAD, adapter.num_layers(model), (adapter.lm_head,)))
    return sites
