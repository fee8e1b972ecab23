"""`phasecode neurons`: sample, fit, score, report, and optionally save an artifact."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from phasecode.artifacts import NEURONS_KIND, save_artifact
from phasecode.calibration.sampling import sample_sites
from phasecode.calibration.text import DEFAULT_CALIBRATION
from phasecode.models.loading import base_record
from phasecode.models.placement import CPU, Placement, load_placed
from phasecode.models.quantize import check_weight_bits, quantize_model
from phasecode.models.resolve import model_reference
from phasecode.settings import FitSettings, SamplingSettings
from phasecode.training.fit import fit_codes, score_sites


def neurons_job(
    model_name: str,
    settings: FitSettings,
    sampling: SamplingSettings,
    out: Path | None = None,
    progress: bool = True,
    weight_bits: int | None = None,
    placement: Placement = CPU,
) -> dict:
    """Run the whole job and return the JSON report (also printed as a table). With
    ``weight_bits`` the decoder linears are fake-quantized before sampling (Fig. 5: the
    activation distributions of a weight-quantized model)."""
    check_weight_bits(weight_bits)
    model, tokenizer = load_placed(model_name, placement)
    base = base_record(model_reference(model_name), model)  # before quantization
    if weight_bits is not None:
        quantize_model(model, weight_bits)
    samples = sample_sites(model, tokenizer, sampling, progress)
    fit = fit_codes(samples.train, settings, progress)
    scores = score_sites(fit.table, samples.train, samples.heldout)
    allocations = fit.table.allocations
    rows = []
    for i, site in enumerate(samples.sites):
        row = {"name": site.name, "kind": site.kind}
        row.update({k: float(v[i]) for k, v in scores.items()})
        if allocations is not None:
            row["allocation"] = allocations[i]
            row["bases"] = fit.table.phase.bases[i, : len(allocations[i])].tolist()
        rows.append(row)
    report = {
        "model": model_name,
        "method": settings.method,
        "timesteps": settings.timesteps,
        "grains": settings.grains,
        "samples": sampling.samples,
        "weight_bits": weight_bits,
        "sites": rows,
        "mean_ratio": float(scores["ratio"].mean()),
        "mean_uniform_ratio": float(scores["uniform_ratio"].mean()),
        "sample_seconds": samples.seconds,
        "train_seconds": fit.seconds,
    }
    print(format_table(report))
    if out is not None:
        save_neurons(out, fit, samples.sites, base, settings, sampling, report)
        print(f"saved neurons to {out}")
    return report


def format_table(report: dict) -> str:
    """Per site-type means: held-out MSE, Lloyd-Max ratio, uniform ratio."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in report["sites"]:
        groups[row["kind"]].append(row)
    head = (
        f"{report['method']}  T={report['timesteps']}  grains={report['grains']}  "
        f"samples/site={report['samples']}  weight_bits={report['weight_bits'] or 'full'}"
    )
    columns = f"{'site':<10}{'n':>4}{'held-out MSE':>15}{'÷ Lloyd-Max':>13}{'uniform ÷ LM':>14}"
    lines = [head, columns]
    for kind, rows in [*groups.items(), ("all", report["sites"])]:
        n = len(rows)
        mse = sum(r["mse"] for r in rows) / n
        ratio = sum(r["ratio"] for r in rows) / n
        uni = sum(r["uniform_ratio"] for r in rows) / n
        lines.append(f"{kind:<10}{n:>4}{mse:>15.3e}{ratio:>13.3f}{uni:>14.3f}")
    lines.append(
        f"sampling {report['sample_seconds']:.1f} s, training {report['train_seconds']:.1f} s"
    )
    return "\n".join(lines)


def save_neurons(out, fit, sites, base, settings, sampling, report) -> None:
    """Neurons + loss curves as an artifact, with everything needed to reproduce them."""
    tensors = fit.table.to_tensors()
    if fit.loss_curve is not None:
        tensors["loss_curve"] = fit.loss_curve
    metadata = {
        "loss_phases": fit.loss_phases,
        "kind": NEURONS_KIND,
        "method": settings.method,
        "timesteps": settings.timesteps,
        "grains": settings.grains,
        "allocation": fit.table.allocations,
        "sites": [s.name for s in sites],
        "base_model": base,
        "weight_bits": report["weight_bits"],
        "sampling": {
            "samples": sampling.samples,
            "calibration": str(sampling.calibration or DEFAULT_CALIBRATION),
            "sequences": sampling.sequences,
            "seq_len": sampling.seq_len,
            "prefix_bos": sampling.prefix_bos,
            "rotate_down": sampling.rotate_down,
            "seed": sampling.seed,
        },
        "mean_ratio": report["mean_ratio"],
        "dtype": str(torch.float32),
    }
    save_artifact(out, tensors, metadata)
