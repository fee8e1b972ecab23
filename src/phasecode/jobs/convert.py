"""`phasecode convert`: base model → spiking-model artifact (neurons + settings + report)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from phasecode.conversion.convert import SpikingModel, calibrate, fit_spiking
from phasecode.conversion.store import save_spiking
from phasecode.inference.prefix_choice import AUTO, PrefixRequest
from phasecode.models.loading import base_record, model_reference
from phasecode.models.placement import CPU, Placement, load_placed
from phasecode.models.sites import site_kind
from phasecode.settings import EnergyBudget, FitSettings, SamplingSettings
from phasecode.simulation.budget import fit_under_budget


def convert_job(
    model_name: str,
    fit: FitSettings,
    sampling: SamplingSettings,
    out: Path,
    placement: Placement = CPU,
    **options,
) -> SpikingModel:
    """Load ``model_name`` where ``placement`` says, then ``convert_loaded`` it (``options``:
    that function's keyword arguments)."""
    model, tokenizer = load_placed(model_name, placement)
    return convert_loaded(model, tokenizer, model_name, fit, sampling, out, **options)


def convert_loaded(
    model,
    tokenizer,
    model_name: str,
    fit: FitSettings,
    sampling: SamplingSettings,
    out: Path,
    rotate: bool = True,
    prefix: PrefixRequest = AUTO,
    lm_head: bool = True,
    progress: bool = True,
    balance: bool = False,
    weight_bits: int | None = None,
    budget: EnergyBudget | None = None,
) -> SpikingModel:
    """Convert (under an energy ``budget``: per-site T, priced spikes) a model already loaded
    from ``model_name`` and not yet changed, which becomes the spiking model's prepared base;
    save it and print the per-site-type summary."""
    base = base_record(model_reference(model_name), model)
    calibrated = calibrate(
        model,
        tokenizer,
        sampling,
        rotate=rotate,
        prefix=prefix,
        lm_head=lm_head,
        progress=progress,
        balance=balance,
        weight_bits=weight_bits,
    )
    if budget is None:
        spiking = fit_spiking(calibrated, fit, progress)
    else:
        spiking = fit_under_budget(calibrated, fit, budget, progress)
    save_spiking(out, spiking, base)
    print(format_conversion(spiking.report))
    print(f"saved spiking model to {out}")
    return spiking


def format_conversion(report: dict) -> str:
    """Mean held-out MSE and Lloyd-Max ratio per site kind, and the time split."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in report["sites"]:
        groups[site_kind(row["name"])].append(row)
    spec = report["spec"]
    choice = report.get("prefix_choice", {})
    lines = [
        f"{spec['method']}  T={spec['timesteps']}  grains={spec['grains']}  "
        f"rotate={spec['rotate']}  prefix={list(spec['prefix_tokens'])}  "
        f"balance={spec.get('balance', False)}  "
        f"weight_bits={spec.get('weight_bits') or 'full'}",
        f"prefix: {choice.get('reason', '?')}"
        + (" (an earlier measurement, from the cache)" if choice.get("source") == "cache" else ""),
        f"{'site':<10}{'n':>4}{'held-out MSE':>15}{'÷ Lloyd-Max':>13}",
    ]
    for kind, rows in groups.items():
        mse = sum(r["mse"] for r in rows) / len(rows)
        ratio = sum(r["ratio"] for r in rows) / len(rows)
        lines.append(f"{kind:<10}{len(rows):>4}{mse:>15.3e}{ratio:>13.3f}")
    budget = report.get("energy_budget")
    if budget is not None:
        steps = ", ".join(f"T={t}: {n}" for t, n in budget["steps_histogram"].items())
        lines.append(
            f"energy budget {budget['ratio']} ({budget.get('mode', 'knapsack')}): predicted "
            f"total ratio {budget['predicted_ratio']:.3f}; sites by T: {steps}"
        )
    seconds = report["seconds"]
    planned = f", budget {seconds['budget']:.1f} s" if "budget" in seconds else ""
    lines.append(
        f"calibration {seconds['calibration']:.1f} s, training {seconds['training']:.1f} s"
        + planned
    )
    return "\n".join(lines)
