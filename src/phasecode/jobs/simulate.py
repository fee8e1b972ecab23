"""`phasecode simulate DIR --check`: load the artifact, run ``api.simulate``'s check, print."""

from __future__ import annotations

from pathlib import Path

import torch

from phasecode.api.simulate import sample_tokens, simulation_report
from phasecode.coding.neuron import mask_window
from phasecode.conversion.store import load_spiking, read_spiking_metadata
from phasecode.evaluation.perplexity import load_corpus


def simulate_job(
    artifact: Path,
    tokens: int = 64,
    check: bool = True,
    float64: bool = True,
    mask_strength: int = 0,
    text: str | None = None,
    device: torch.device | str = "cpu",
    base_model: str | None = None,
) -> dict:
    """Simulate ``tokens`` tokens of ``text`` (default: WikiText-2 test) and, with ``check``,
    compare with the fast path (``api.simulate.simulation_report``)."""
    metadata = read_spiking_metadata(artifact)
    mask_window(metadata["spec"]["timesteps"], mask_strength)
    load_corpus(text or "wikitext2")  # a missing text file is refused before the model loads
    spiking = load_spiking(artifact, float64=float64, device=device, base_model=base_model)
    ids = sample_tokens(spiking, tokens, text)
    report = {"artifact": str(artifact), **simulation_report(spiking, ids, check, mask_strength)}
    print(format_simulation(report))
    return report


def format_simulation(report: dict) -> str:
    s = report["seconds"]
    lines = [
        f"simulated {report['tokens']} tokens at T={report['timesteps']} ({report['dtype']}): "
        f"{s['simulator']:.2f} s; ANN forward {s['ann']:.3f} s, so "
        f"{report['simulator_over_T_ann']:.2f} × T × ANN; peak RSS "
        f"{report['peak_rss_gib']:.2f} GiB (the simulator's peak added "
        f"{report['simulator_peak_gib']:.2f} GiB)"
    ]
    check = report.get("check")
    if check:
        verdict = "PASS" if check["passed"] else "FAIL"
        lines.append(
            f"fast path vs simulator: max |Δlogit| {check['max_abs_difference']:.3e}, relative "
            f"{check['max_relative_difference']:.3e} (tolerance {check['tolerance']:.1e}); "
            f"argmax agreement {check['argmax_agreement']:.4f}  → {verdict}"
        )
        if check["rounding_sensitivity"] is not None:
            lines.append(
                f"float32 floor: ±1 ulp on the embeddings moves the fast path's logits by "
                f"{check['rounding_sensitivity']:.3e} (relative); use --dtype float64 for an "
                "exact check"
            )
    return "\n".join(lines)
