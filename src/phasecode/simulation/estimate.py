"""Energy of a spiking model predicted from its sites' spike rates, without simulating it.

Choosing timesteps per site under an energy budget (``training.budget``) needs the energy of
many candidate models; the simulator measures one in minutes. Under the counting rules of
``simulation.counting`` every count is a fixed cost plus, per site, (spikes) × (that site's
fan-out), so the total energy per token is

    E = E_fixed(T_s) + Σ_s N_s · c_s,

with N_s the site's spikes per token, c_s what one spike costs (its ACs, their operand reads,
its bit) and E_fixed the analog work (d(t) scalings, accumulate–difference, residual adds,
rotations, neuron updates) that depends only on the shapes and the timesteps. Attention's
fan-outs depend on how many keys a query sees: this module prices a ``context``-token window
after the prefix, with causal attention (a sliding window would make it cheaper). The ANN's
energy on the same window comes from the same rules. ``phasecode energy`` measures the truth;
tests/simulation/test_estimate.py checks the prediction against the simulator's counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from phasecode.models.adapters import ATTENTION, MLP, adapter_for
from phasecode.models.sites import LM_HEAD, SiteKey
from phasecode.simulation.counting import ELEMENTWISE_MACS, NEURON_OPS
from phasecode.simulation.energy import EnergyCosts


@dataclass(frozen=True)
class SiteEnergy:
    """Per-token energy terms of one model at one context length, in picojoules."""

    spike_pj: Tensor  # [S] one spike's cost at each site
    width: Tensor  # [S] neurons per token at each site (probs: visible keys × heads)
    step_pj: Tensor  # [S] per token, what one more timestep of the site costs (fixed part)
    shared_step_pj: float  # per token and step: accumulate–difference, residual adds
    constant_pj: float  # per token, independent of T: RoPE, rotations
    ann_pj: float  # the ANN's energy per token on the same window
    ann_head_pj: float = 0.0  # of which the lm_head's (its share grows with the vocabulary)

    def snn_pj(self, spikes_per_neuron: Tensor, steps: Tensor) -> float:
        """Predicted SNN energy per token for per-site spike rates and timesteps [S]."""
        spikes = (spikes_per_neuron * self.width * self.spike_pj).sum()
        fixed = (steps.to(self.step_pj.dtype) * self.step_pj).sum()
        shared = self.shared_step_pj * int(steps.max())
        return float(spikes + fixed) + shared + self.constant_pj

    def spike_free_pj(self, steps: Tensor) -> float:
        """What the SNN costs per token before any spike: its per-step and constant work."""
        return self.snn_pj(torch.zeros(len(steps), dtype=torch.float64), steps)

    def ratio(self, spikes_per_neuron: Tensor, steps: Tensor) -> float:
        return self.snn_pj(spikes_per_neuron, steps) / self.ann_pj


def site_energy(
    model: nn.Module,
    sites: list[str],
    costs: EnergyCosts,
    context: int = 512,
    prefix: int = 0,
    rotations: tuple[bool, bool] = (True, True),
) -> SiteEnergy:
    """The terms of ``SiteEnergy`` for ``model``'s ``sites`` on a ``context``-token window
    after ``prefix`` cached tokens; ``rotations``: (online down_proj, per-head Q/K)."""
    adapter = adapter_for(model)
    config = model.config
    hidden, inter = config.hidden_size, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim, layers = adapter.head_dim(config), config.num_hidden_layers
    vocab = adapter.module(model, adapter.lm_head).out_features
    groups = heads // kv_heads
    seen = prefix + (context + 1) / 2  # keys a query sees, on average
    seen_by = (context + 1) / 2  # queries that see a window key, on average
    mac = costs.mac_pj + 2 * costs.read_pj  # an analog MAC reads two operands
    add = costs.ac_pj + 2 * costs.read_pj
    bit_read, bit_write = costs.read_pj / costs.word_bits, costs.write_pj / costs.word_bits
    spike_ac = costs.ac_pj + costs.read_pj + bit_read  # one spike-driven accumulation
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    # kind -> (fan-out of one spike, neurons per token, outputs its d(t) scales per token)
    shapes = {
        "qkv": (q_out + 2 * kv_out, hidden, q_out + 2 * kv_out),
        "q": (seen, q_out, heads * seen),
        "k": (groups * seen_by, kv_out, heads * seen),
        "v": (groups * seen_by, kv_out, q_out),
        "probs": (head_dim, heads * seen, q_out),
        "o": (hidden, q_out, hidden),
        "gate_up": (2 * inter, hidden, 2 * inter),
        "silu": (1, inter, inter),
        "up": (1, inter, inter),
        "down": (hidden, inter, hidden),
        LM_HEAD: (vocab, hidden, vocab),
    }
    rows = [shapes[SiteKey.parse(name).kind] for name in sites]
    fan_out, width, outputs = (
        torch.tensor(c, dtype=torch.float64) for c in zip(*rows, strict=True)
    )
    step = outputs * costs.mac_pj + 2 * outputs * costs.read_pj + NEURON_OPS * width * costs.ac_pj

    def elementwise(kind: str, elements: float) -> tuple[float, float]:
        """(SNN per step: φ plus accumulate and difference, ANN once)."""
        once = elements * (ELEMENTWISE_MACS[kind] * mac + costs.write_pj)
        return once + 2 * elements * add, once

    block_norms = len(adapter.post_norms) + sum(
        adapter.pre_norm(branch) is not None for branch in (ATTENTION, MLP)
    )
    parts = [
        elementwise("rmsnorm", (block_norms * layers + 1) * hidden),
        elementwise("softmax", layers * heads * seen),
        elementwise(adapter.activation_kind(config), layers * inter),
    ]
    if adapter.q_norm is not None:
        parts.append(elementwise("rmsnorm", layers * (q_out + kv_out)))
    residual = 2 * layers * hidden * (add + costs.write_pj)  # per step in the SNN, once in ANN
    shared = sum(snn for snn, _ in parts) + residual
    if rotations[0] and adapter.post_norms:  # the residual rotation on each post-norm's O(t)
        shared += layers * len(adapter.post_norms) * rotation_pj(hidden, costs, add, mac)
    constant = layers * ELEMENTWISE_MACS["rope"] * (q_out + kv_out) * mac  # analog in both
    constant += layers * _bias_outputs(adapter, model) * add
    scaled = adapter.scales_embedding(model)
    embedding = hidden * (mac + costs.write_pj) if scaled else 0.0  # Gemma: E·√hidden
    constant += embedding
    if rotations[0]:  # FWHT additions plus the odd factor's MACs, SNN only
        constant += layers * rotation_pj(inter, costs, add, mac)
    if rotations[1]:
        constant += layers * (q_out + kv_out) * (math.log2(head_dim) * add + costs.write_pj)
    head = hidden * vocab * mac + vocab * costs.write_pj
    if LM_HEAD not in sites:
        constant += head
    linear_macs = hidden * (q_out + 2 * kv_out) + q_out * hidden + 3 * hidden * inter
    linear_out = q_out + 2 * kv_out + hidden + 2 * inter + hidden
    scores = heads * seen * head_dim  # Q·Kᵀ and P·V each, per token
    ann = layers * (linear_macs * mac + linear_out * costs.write_pj)
    ann += layers * (2 * scores * mac + (heads * seen + q_out) * costs.write_pj)
    ann += head + sum(once for _, once in parts) + residual
    ann += layers * ELEMENTWISE_MACS["rope"] * (q_out + kv_out) * mac
    ann += layers * _bias_outputs(adapter, model) * add + embedding
    return SiteEnergy(
        spike_pj=fan_out * spike_ac + bit_write,
        width=width,
        step_pj=step,
        shared_step_pj=shared,
        constant_pj=constant,
        ann_pj=ann,
        ann_head_pj=head,
    )


def rotation_pj(width: int, costs: EnergyCosts, add: float, mac: float) -> float:
    """One online H_{2^k} ⊗ Q_m rotation of ``width`` elements: k additions per element
    (the fast transform) plus m MACs per element for the odd factor."""
    power = width & -width
    odd = width // power
    pj = width * (math.log2(power) * add + costs.write_pj)
    return pj + (width * odd * mac if odd > 1 else 0.0)


def _bias_outputs(adapter, model: nn.Module) -> int:
    """Output features per token of a decoder layer's linears that carry a bias."""
    layer = adapter.decoder_layers(model)[0]
    linears = [adapter.part(layer, name) for name in adapter.decoder_linears()]
    return sum(linear.out_features for linear in linears if linear.bias is not None)
