"""Spikes, operations and energy of a converted model, per layer (``phasecode.energy``, the
work of `phasecode energy`).

The spike-level simulator runs ``tokens`` tokens of WikiText-2 test once without and once
with spike masking, counting every operation (``simulation.counting``); the ANN's counts are
those of the same operations on the same tokens. Masking changes the coded values, so its
perplexity is measured too (fast path, first ``windows`` windows).
"""

from __future__ import annotations

from collections import defaultdict

from torch import Tensor

from phasecode.api.simulate import simulate
from phasecode.coding.neuron import mask_window
from phasecode.conversion.convert import SpikingModel
from phasecode.inference.nll import perplexity
from phasecode.simulation.counting import Counter, OpCount
from phasecode.simulation.energy import costs_dict, load_costs, summary


def energy_report(
    spiking: SpikingModel,
    ids: Tensor,
    ppl_windows: Tensor,
    ann_ppl: float,
    mask_strength: int = 3,
    costs: str = "45nm-fp32",
    progress: bool = True,
) -> dict:
    """Counts and energy on ``ids`` [1, tokens] without and with spike masking, and the
    masked and unmasked perplexity ratios to ``ann_ppl`` on ``ppl_windows``."""
    cost_table = load_costs(costs)
    mask_window(spiking.table.timesteps, mask_strength)
    measured = {s: measure(spiking, ids, s, cost_table) for s in (0, mask_strength)}
    ppl = {
        name: masked_perplexity(spiking, ppl_windows, strength, progress)
        for name, strength in (("snn", 0), ("snn_masked", mask_strength))
    }
    ann, snn, _ = measured[0]
    masked = measured[mask_strength][1]
    snn["ppl_ratio"] = ppl["snn"] / ann_ppl
    masked["ppl_ratio"] = ppl["snn_masked"] / ann_ppl
    return {
        "tokens": ids.shape[1],
        "timesteps": spiking.table.timesteps,
        "mask_strength": mask_strength,
        "costs": costs_dict(cost_table),
        "ann": ann,
        "snn": snn,
        "snn_masked": masked,
        "ratios": {
            "compute": snn["energy_j"] / ann["energy_j"],
            "total": snn["total_energy_j"] / ann["total_energy_j"],
            "compute_masked": masked["energy_j"] / ann["energy_j"],
            "total_masked": masked["total_energy_j"] / ann["total_energy_j"],
        },
        "ppl": {
            "ann": ann_ppl,
            **ppl,
            "windows": len(ppl_windows),
            "seq_len": ppl_windows.shape[1],
        },
        "lm_head_share": _head_share(measured[0][2], cost_table),
        "layers": _layers(measured[0][2], cost_table),
        "site_firing_rates": _site_rates(measured[0][2]),
        "operations": _operations(measured[0][2]),
        "seconds": {"snn": snn["seconds"], "snn_masked": masked["seconds"]},
    }


def measure(spiking, ids, mask_strength: int, costs) -> tuple[dict, dict, Counter]:
    """Simulate ``ids`` with counting: the ANN's and the SNN's summaries, and the counter."""
    counter = Counter()
    _, seconds = simulate(spiking, ids, mask_strength, counter)
    snn = summary(counter.totals("snn"), costs, mask_cost=mask_strength > 0)
    snn["seconds"] = seconds
    return summary(counter.totals("ann"), costs), snn, counter


def masked_perplexity(spiking, windows, mask_strength: int, progress: bool = True) -> float:
    """Fast-path perplexity with spike masking (after the artifact's prefix)."""
    with spiking.coded(mask_strength):
        return perplexity(spiking.model, windows, spiking.prefix, 4, progress).ppl


def _grouped(counts: dict, by) -> dict[str, OpCount]:
    groups: dict[str, OpCount] = defaultdict(OpCount)
    for key, count in counts.items():
        groups[by(key)].add(count)
    return groups


def _layers(counter: Counter, costs) -> list[dict]:
    snn = _grouped(counter.snn, lambda key: key[0])
    ann = _grouped(counter.ann, lambda key: key[0])
    rows = []
    for layer in snn:
        s, a = summary(snn[layer], costs), summary(ann[layer], costs)
        rows.append({"layer": layer, "snn": s, "ann": a})
    return rows


def _head_share(counter: Counter, costs) -> dict[str, float]:
    """The lm_head's share of each network's total energy (its input's neurons and its
    products; a large vocabulary such as Gemma 3's makes it a large part of a small model)."""
    shares = {}
    for network in ("snn", "ann"):
        counts = getattr(counter, network)
        total = summary(_grouped(counts, lambda key: "all")["all"], costs)["total_energy_j"]
        head = summary(counts.get(("head", "lm_head"), OpCount()), costs)["total_energy_j"]
        shares[network] = head / total
    return shares


def _operations(counter: Counter) -> list[dict]:
    """Every (layer, operation or site) with its SNN and ANN counts: the per-site detail."""
    rows = []
    for key, snn in counter.snn.items():
        row = {"layer": key[0], "op": key[1], "snn": snn.as_dict()}
        if snn.neuron_steps:
            row["firing_rate"] = snn.spikes / snn.neuron_steps
        if key in counter.ann:
            row["ann"] = counter.ann[key].as_dict()
        rows.append(row)
    return rows


def _site_rates(counter: Counter) -> dict[str, float]:
    """Firing rate per site kind, over all layers."""
    sites = {k: v for k, v in counter.snn.items() if v.neuron_steps}
    grouped = _grouped(sites, lambda key: key[1])
    return {kind: c.spikes / c.neuron_steps for kind, c in grouped.items()}
