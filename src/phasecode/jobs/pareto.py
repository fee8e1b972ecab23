"""`phasecode pareto`: the energy / perplexity front of many conversions of one model.

One calibration serves every point (as ``compare`` does); each point is fitted, simulated on
``tokens`` tokens with operation counting (energy ratios to the ANN) and scored on the
perplexity windows (fast path). Results go to DIR/pareto.json one point at a time, so an
interrupted sweep resumes where it stopped; DIR/pareto.md and DIR/pareto.png are rewritten
after every point.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from phasecode.api.energy import masked_perplexity, measure
from phasecode.api.simulate import sample_tokens
from phasecode.comparison.frontier import Point, front_table, measured, plot_front
from phasecode.comparison.grid import digest
from phasecode.comparison.store import ResultStore
from phasecode.conversion.convert import Calibrated, calibrate, fit_spiking
from phasecode.evaluation.perplexity import load_corpus, token_windows
from phasecode.inference.nll import perplexity
from phasecode.models.placement import CPU, Placement, load_placed
from phasecode.settings import EnergyBudget, FitSettings, SamplingSettings, TrainConfig
from phasecode.simulation.budget import budget_strategy
from phasecode.simulation.energy import load_costs

RESULTS, TABLE, PLOT = "pareto.json", "pareto.md", "pareto.png"


def pareto_job(
    model_name: str,
    points: list[Point],
    sampling: SamplingSettings,
    out: Path,
    windows: int = 40,
    seq_len: int = 512,
    tokens: int = 512,
    costs: str = "45nm-fp32",
    text: str = "wikitext2",
    grains: int = 2,
    train: TrainConfig | None = None,
    progress: bool = True,
    placement: Placement = CPU,
) -> dict[str, dict]:
    """Measure every point not yet in DIR/pareto.json; returns all records (by point key; a
    point measured under other settings is measured again)."""
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / RESULTS)
    context = {
        "model": model_name,
        "sampling": asdict(sampling),
        "windows": windows,
        "seq_len": seq_len,
        "tokens": tokens,
        "costs": costs,
        "text": text,
        "grains": grains,
        "train": asdict(train or TrainConfig()),
    }
    tag = digest(context)
    todo = [
        p for p in points if store.get(p.key, {}).get("context") != tag or not store.done(p.key)
    ]
    if todo:
        cost_table = load_costs(costs)
        model, tokenizer = load_placed(model_name, placement)
        ppl_windows = token_windows(tokenizer, load_corpus(text), seq_len, windows)
        ann = store.get("ann")
        if ann is None or ann.get("context") != tag:
            ann_ppl = perplexity(model, ppl_windows, progress=progress).ppl
            store.put("ann", {"status": "ok", "ppl": ann_ppl, "context": tag})
        ann_ppl = store.get("ann")["ppl"]
        calibrated = calibrate(model, tokenizer, sampling, progress=progress)
        for point in todo:
            fit = FitSettings(
                point.method,
                point.timesteps,
                grains,
                train or TrainConfig(),
                point.code,
                point.objective,
                point.probs_bias,
            )
            record = _measure_point(calibrated, point, fit, ppl_windows, (tokens, text), cost_table)
            record["ppl_ratio"] = record["ppl"] / ann_ppl
            record["context"] = tag
            store.put(point.key, record)
            _write(out, points, store)
            print(
                f"{point.curve} {point.label}: PPL ×{record['ppl_ratio']:.4f}, total energy "
                f"×{record['total_ratio']:.3f}, compute ×{record['compute_ratio']:.3f}"
            )
    _write(out, points, store)
    return store.records


def _measure_point(
    calibrated: Calibrated,
    point: Point,
    fit: FitSettings,
    windows,
    energy_text: tuple[int, str],
    costs,
) -> dict:
    """Fit one point; its energy on ``energy_text`` = (tokens, corpus) and its perplexity."""
    tokens, text = energy_text
    start = time.perf_counter()
    budget = None
    if point.budget is None:
        spiking = fit_spiking(calibrated, fit, progress=False)
    else:
        settings = EnergyBudget(point.budget, context=tokens, mode=point.budget_mode)
        spiking = fit_spiking(calibrated, fit, False, budget_strategy(settings))
        budget = spiking.report["energy_budget"]
    ids = sample_tokens(spiking, tokens, text)
    ann, snn, _ = measure(spiking, ids, point.mask, costs)
    ppl = masked_perplexity(spiking, windows, point.mask, progress=False)
    return {
        "status": "ok",
        "point": asdict(point),
        "ppl": ppl,
        "total_ratio": snn["total_energy_j"] / ann["total_energy_j"],
        "compute_ratio": snn["energy_j"] / ann["energy_j"],
        "acs_per_mac": snn["ac"] / ann["mac"],
        "firing_rate": snn["firing_rate"],
        "energy_budget": budget,
        "conversion_seconds": spiking.report["seconds"]["training"],
        "seconds": time.perf_counter() - start,
    }


def _write(out: Path, points: list[Point], store: ResultStore) -> None:
    rows = measured(points, store.records)
    (out / TABLE).write_text("\n".join(front_table(rows)) + "\n")
    plot_front(out / PLOT, rows)
