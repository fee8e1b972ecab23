"""`phasecode convert`: base model → spiking-model artifact (neurons + settings + report)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from phasecode.api.model import convert, load_model
from phasecode.conversion.causal_lm import SpikingModelForCausalLM
from phasecode.conversion.config import ConversionConfig
from phasecode.models.placement import CPU, Placement
from phasecode.models.sites import site_kind
from phasecode.reporting.report import describe_budget, describe_range, describe_reconstruction


def convert_job(
    model_name: str,
    config: ConversionConfig,
    out: Path,
    calibration: Path | None = None,
    placement: Placement = CPU,
    progress: bool = True,
) -> SpikingModelForCausalLM:
    """Load ``model_name`` where ``placement`` says, then ``convert_loaded`` it."""
    model, tokenizer = load_placed_model(model_name, placement)
    return convert_loaded(model, tokenizer, config, out, calibration, progress)


def load_placed_model(model_name: str, placement: Placement):
    """``phasecode.load_model`` at the placement (float32 unless it names a dtype)."""
    return load_model(
        model_name, placement.device, placement.dtype or "float32", placement.device_map
    )


def convert_loaded(
    model,
    tokenizer,
    config: ConversionConfig,
    out: Path,
    calibration: Path | None = None,
    progress: bool = True,
) -> SpikingModelForCausalLM:
    """``phasecode.convert`` a model as loaded (not yet changed), which becomes the spiking
    model's base; save it to ``out`` and print the per-site-type summary."""
    spiking = convert(model, tokenizer, config, calibration, progress)
    spiking.save_pretrained(out)
    print(format_conversion(spiking.spiking.report))
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
        f"neuron range: {describe_range(report.get('neuron_range_choice'))}",
        f"{'site':<10}{'n':>4}{'held-out MSE':>15}{'÷ Lloyd-Max':>13}",
    ]
    for kind, rows in groups.items():
        mse = sum(r["mse"] for r in rows) / len(rows)
        ratio = sum(r["ratio"] for r in rows) / len(rows)
        lines.append(f"{kind:<10}{len(rows):>4}{mse:>15.3e}{ratio:>13.3f}")
    if report.get("reconstruction"):
        lines.append(f"tuned after training, {describe_reconstruction(report['reconstruction'])}")
    budget = report.get("energy_budget")
    if budget is not None:
        lines.append(f"energy budget {describe_budget(budget)}")
    seconds = report["seconds"]
    planned = f", budget {seconds['budget']:.1f} s" if "budget" in seconds else ""
    lines.append(
        f"calibration {seconds['calibration']:.1f} s, training {seconds['training']:.1f} s"
        + planned
    )
    return "\n".join(lines)
