"""`phasecode energy`: load the artifact and its base model, count and price the spiking
network's work (``api.energy``), print per layer."""

from __future__ import annotations

from pathlib import Path

from phasecode.api.energy import energy_report
from phasecode.api.simulate import sample_tokens
from phasecode.artifacts import artifact_id
from phasecode.coding.neuron import mask_window
from phasecode.conversion.store import load_base_model, load_spiking, read_spiking_metadata
from phasecode.evaluation.perplexity import load_corpus, token_windows
from phasecode.inference.score_cache import PLAIN, perplexity_cached
from phasecode.models.placement import CPU, Placement
from phasecode.simulation.energy import load_costs


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
    base_model: str | None = None,
) -> dict:
    """Counts and energy on ``tokens`` tokens of ``text`` (a corpus name or a file), and the
    perplexity ratios to the plain ANN on its first ``windows`` windows."""
    load_costs(costs)
    metadata = read_spiking_metadata(artifact)
    mask_window(metadata["spec"]["timesteps"], mask_strength)  # fail before any heavy work
    corpus = load_corpus(text)
    model, tokenizer = load_base_model(metadata, placement.device, placement.dtype, base_model)
    ppl_windows = token_windows(tokenizer, corpus, seq_len, windows)
    ann_ppl = perplexity_cached(model, ppl_windows, None, 1, progress, PLAIN).ppl
    spiking = load_spiking(artifact, model, tokenizer)
    ids = sample_tokens(spiking, tokens, text)
    report = energy_report(spiking, ids, ppl_windows, ann_ppl, mask_strength, costs, progress)
    report = {"artifact": str(artifact), "artifact_id": artifact_id(artifact), **report}
    print(format_energy(report))
    return report


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
    share = report.get("lm_head_share")
    if share is not None:  # artifacts' reports from before it was measured have none
        lines.append(
            f"lm_head share of the total energy: SNN {share['snn']:.3f}, ANN {share['ann']:.3f}"
        )
    return "\n".join(lines)
