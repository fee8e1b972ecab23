"""`phasecode energy`: spikes, operations and energy of a converted model, per layer.

The spike-level simulator runs ``tokens`` tokens of WikiText-2 test once without and once
with spike masking, counting every operation (``simulation.counting``); the ANN's counts are
those of the same operations on the same tokens. Masking changes the coded values, so its
perplexity is measured too (fast path, first ``windows`` windows).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from phasecode.coding.neuron import mask_window
from phasecode.conversion.store import load_base_model, load_spiking, read_spiking_metadata
from phasecode.evaluation.perplexity import load_corpus, token_windows
from phasecode.inference.nll import perplexity
from phasecode.inference.score_cache import PLAIN, perplexity_cached
from phasecode.jobs.simulate import sample_tokens, simulate
from phasecode.models.placement import CPU, Placement
from phasecode.simulation.counting import Counter, OpCount
from phasecode.simulation.energy import costs_dict, load_costs, summary


def energy_job(
    artifact: Path,
    tokens: int = 512,
    mask_strength: int = 3,
    costs: str = "45nm-fp32",
    windows: int = 8,
    seq_len: int = 512,
    progress: bool = True,
    text: str = "wikitext2",
    placement: Placement = CPU,
) -> dict:
    """Counts and energy on ``tokens`` tokens of ``text`` (a corpus name or a file), and the
    perplexity ratios on its first ``windows`` windows."""
    cost_table = load_costs(costs)
    metadata = read_spiking_metadata(artifact)
    mask_window(metadata["spec"]["timesteps"], mask_strength)  # fail before any heavy work
    corpus = load_corpus(text)
    model, tokenizer = load_base_model(metadata, placement.device, placement.dtype)
    ppl_windows = token_windows(tokenizer, corpus, seq_len, windows)
    ann_ppl = perplexity_cached(model, ppl_windows, None, 1, progress, PLAIN).ppl
    spiking = load_spiking(artifact, model, tokenizer)
    ids = sample_tokens(spiking, tokens, text)

    measured = {s: measure(spiking, ids, s, cost_table) for s in (0, mask_strength)}
    ppl = {
        name: masked_perplexity(spiking, ppl_windows, strength, progress)
        for name, strength in (("snn", 0), ("snn_masked", mask_strength))
    }
    ann, snn, _ = measured[0]
    masked = measured[mask_strength][1]
    snn["ppl_ratio"] = ppl["snn"] / ann_ppl
    masked["ppl_ratio"] = ppl["snn_masked"] / ann_ppl
    report = {
        "artifact": str(artifact),
        "tokens": tokens,
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
        "ppl": {"ann": ann_ppl, **ppl, "windows": len(ppl_windows), "seq_len": seq_len},
        "layers": _layers(measured[0][2], cost_table),
        "site_firing_rates": _site_rates(measured[0][2]),
        "operations": _operations(measured[0][2]),
        "seconds": {"snn": snn["seconds"], "snn_masked": masked["seconds"]},
    }
    print(format_energy(report))
    return report


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


def format_energy(report: dict) -> str:
    lines = [
        f"{'layer':<10}{'fire rate':>10}{'SNN AC (G)':>12}{'SNN MAC (G)':>12}"
        f"{'ANN MAC (G)':>12}{'SNN mJ':>9}{'ANN mJ':>9}{'SNN/ANN':>9}"
    ]
    for row in report["layers"]:
        s, a = row["snn"], row["ann"]
        lines.append(
            f"{row['layer']:<10}{s.get('firing_rate', 0.0):>10.3f}{s['ac'] / 1e9:>12.3f}"
            f"{s['mac'] / 1e9:>12.4f}{a['mac'] / 1e9:>12.3f}{s['total_energy_j'] * 1e3:>9.2f}"
            f"{a['total_energy_j'] * 1e3:>9.2f}{s['total_energy_j'] / a['total_energy_j']:>9.3f}"
        )
    rates = "  ".join(f"{k} {v:.3f}" for k, v in report["site_firing_rates"].items())
    lines.append(f"firing rate by site: {rates}")
    lines.append(
        f"{'':<14}{'MAC (G)':>10}{'AC (G)':>10}{'MAC+AC J':>10}{'R/W J':>9}{'neuron J':>10}"
        f"{'total J':>9}{'PPL ratio':>10}"
    )
    for name in ("ann", "snn", "snn_masked"):
        row = report[name]
        lines.append(
            f"{name:<14}{row['mac'] / 1e9:>10.3f}{row['ac'] / 1e9:>10.3f}{row['energy_j']:>10.4f}"
            f"{row['rw_energy_j']:>9.4f}{row['neuron_energy_j']:>10.4f}"
            f"{row['total_energy_j']:>9.4f}{row.get('ppl_ratio', 1.0):>10.4f}"
        )
    r = report["ratios"]
    lines.append(
        f"SNN/ANN energy: MAC+AC {r['compute']:.3f}, total {r['total']:.3f}; "
        f"masked (strength {report['mask_strength']}): MAC+AC {r['compute_masked']:.3f}, "
        f"total {r['total_masked']:.3f}   [{report['tokens']} tokens, {report['costs']['name']}]"
    )
    return "\n".join(lines)
