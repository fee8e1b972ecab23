"""Benchmark: the conversion on real models of two families, against the plain ANN.

For each model (SmolLM2-135M, the default; Qwen2.5-Coder-0.5B-Instruct, a real Qwen2 with
q/k/v biases, when its GGUF is there) and the same first WikiText-2 test windows for every row:

- the plain ANN (GPTQ protocol), the prepared ANN with the prefix `convert` chose by
  measurement, and the SNN (mgpc, 2 grains) at T = 8 and T = 6 — every ratio against the
  plain ANN;
- the conversion time (prefix choice + rotations + calibration + training at T = 8) and the
  process's peak RSS;
- held-out MSE ÷ Lloyd-Max per site kind with and without the per-head Q/K/V rotations (same
  prefix, same samples otherwise), so the effect of each change on each site kind is visible;
- every prefix candidate's loss and peak (why the prefix is what it is).

Results go to benchmarks/results/real_models.json as each model finishes (a rerun skips
finished models; --redo to force); docs/results-real-models.md is regenerated from the JSON.

    python benchmarks/real_models.py [--qwen2 PATH.gguf] [--windows 40] [--redo]

The Qwen2 GGUF (491 MB) is assembled by ../shared/models/fetch-qwen2.sh DIR; without it that
model is skipped with a note. Run alone: two torch processes on 2 cores distort every time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

import torch

from phasecode.artifacts import write_json_atomic
from phasecode.conversion.convert import calibrate, fit_spiking
from phasecode.evaluation.perplexity import load_corpus, token_windows
from phasecode.inference.nll import perplexity
from phasecode.inference.prefix_choice import SELECTION_WINDOWS, PrefixRequest
from phasecode.models.loading import load_model
from phasecode.models.resolve import DEFAULT_MODEL
from phasecode.models.sites import site_kind
from phasecode.settings import FitSettings, SamplingSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "real_models.json"
DOC = ROOT / "docs" / "results-real-models.md"
QWEN2 = ROOT.parent / "models" / "qwen2.5-coder-0.5b-instruct.gguf"
TIMESTEPS = (8, 6)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def kind_ratios(report: dict) -> dict[str, float]:
    """Mean held-out MSE ÷ Lloyd-Max per site kind."""
    groups: dict[str, list[float]] = defaultdict(list)
    for row in report["sites"]:
        groups[site_kind(row["name"])].append(row["ratio"])
    return {kind: sum(v) / len(v) for kind, v in groups.items()}


def bench_model(name: str, windows_n: int, seq_len: int, batch: int) -> dict:
    load_model(name)  # a GGUF is dequantized once into the cache: not part of the timings
    start = time.perf_counter()
    model, tokenizer = load_model(name)
    load_seconds = time.perf_counter() - start
    windows = token_windows(tokenizer, load_corpus("wikitext2"), seq_len, windows_n)
    ann = perplexity(model, windows, batch_size=batch, progress=False)
    print(f"{name}: ANN {ann.ppl:.3f} ({ann.seconds:.0f} s)", flush=True)

    start = time.perf_counter()
    calibrated = calibrate(model, tokenizer, SamplingSettings(), progress=False)
    rows, prepared_ppl = {}, None
    for t in TIMESTEPS:
        spiking = fit_spiking(calibrated, FitSettings("mgpc", t, 2), progress=False)
        if t == TIMESTEPS[0]:
            conversion_seconds = time.perf_counter() - start
            conversion_rss = peak_rss_gib()
            with spiking.analog():
                prepared_ppl = perplexity(
                    model, windows, spiking.prefix, batch_size=batch, progress=False
                ).ppl
            heads_on = kind_ratios(spiking.report)
        with spiking.coded():
            snn = perplexity(model, windows, spiking.prefix, batch_size=batch, progress=False)
        rows[f"T{t}"] = {
            "ppl": snn.ppl,
            "ratio": snn.ppl / ann.ppl,
            "ratio_prefixed": snn.ppl / prepared_ppl,
            "mean_site_ratio": spiking.report["mean_ratio"],
            "training_seconds": spiking.report["seconds"]["training"],
            "eval_seconds": snn.seconds,
        }
        print(f"{name}: SNN T={t} {snn.ppl:.3f} (×{snn.ppl / ann.ppl:.4f})", flush=True)
    choice = spiking.report["prefix_choice"]
    del calibrated, spiking, model

    # the per-head rotations switched off, all else equal: per-kind site ratios before/after
    model, tokenizer = load_model(name)
    given = PrefixRequest("ids", ids=tuple(choice["chosen"])) if choice["chosen"] else None
    without = calibrate(
        model,
        tokenizer,
        SamplingSettings(),
        prefix=given or PrefixRequest("none"),
        progress=False,
        rotate_heads=False,
    )
    heads_off = kind_ratios(
        fit_spiking(without, FitSettings("mgpc", TIMESTEPS[0], 2), False).report
    )
    return {
        "model": name,
        "windows": len(windows),
        "seq_len": seq_len,
        "load_seconds": load_seconds,
        "ann": {"ppl": ann.ppl, "seconds": ann.seconds},
        "ann_prefixed": {"ppl": prepared_ppl, "ratio": prepared_ppl / ann.ppl},
        "snn": rows,
        "conversion_seconds": conversion_seconds,
        "conversion_peak_rss_gib": conversion_rss,
        "site_ratios": {"head_rotation": heads_on, "no_head_rotation": heads_off},
        "prefix_choice": choice,
    }


def markdown(result: dict) -> str:
    lines = [
        "# Real models: conversion quality and cost",
        "",
        "WikiText-2 test, the first windows of 512 tokens (GPTQ protocol), the same windows for "
        "every row; mgpc with 2 grains; every ratio is against the **plain** ANN unless marked. "
        "Conversion time = prefix choice + rotations + calibration (C4 sample, 16 × 256 tokens) "
        "+ training at T = 8, on the 2-core CPU, run alone. Regenerate with "
        "`python benchmarks/real_models.py` (JSON: `benchmarks/results/real_models.json`).",
        "",
        "Peak RSS is the benchmark process's, including the first load of the model (a GGUF's "
        "dequantization), not the conversion alone; `benchmarks/scale.py` measures a conversion "
        "by itself.",
        "",
        "| model | windows | ANN | ANN + prefix | SNN T=8 | ÷ ANN | ÷ ANN+prefix | SNN T=6 | "
        "÷ ANN | conversion s | peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["models"].values():
        t8, t6 = r["snn"]["T8"], r["snn"]["T6"]
        lines.append(
            f"| {Path(r['model']).name} | {r['windows']} | {r['ann']['ppl']:.3f} | "
            f"{r['ann_prefixed']['ppl']:.3f} | {t8['ppl']:.3f} | {t8['ratio']:.4f} | "
            f"{t8['ratio_prefixed']:.4f} | {t6['ppl']:.3f} | {t6['ratio']:.4f} | "
            f"{r['conversion_seconds']:.0f} | {r['conversion_peak_rss_gib']:.2f} |"
        )
    for r in result["models"].values():
        on, off = r["site_ratios"]["head_rotation"], r["site_ratios"]["no_head_rotation"]
        lines += [
            "",
            f"## {Path(r['model']).name}: held-out MSE ÷ Lloyd-Max per site kind (T = 8)",
            "",
            "| site | without per-head rotations | with |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {off[k]:.3f} | {on[k]:.3f} |" for k in on]
        choice = r["prefix_choice"]
        lines += [
            "",
            f"Prefix chosen: {choice['chosen']} — {choice['reason']}. Candidates (loss ÷ plain "
            f"ANN's on {SELECTION_WINDOWS} calibration windows, budget "
            f"{1 + choice['loss_budget']:.3f}; peak = max |x| at the down_proj inputs of the "
            f"windows' positions, plain ANN: {choice['plain']['peak']:.1f}):",
            "",
            "| prefix | text | loss ratio | peak | within budget |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['token_ids']} | {json.dumps(c['text'])} | {c['loss_ratio']:.4f} | "
            f"{c['peak']:.1f} | {c['accepted']} |"
            for c in choice["candidates"]
        ]
    for name, why in result.get("skipped", {}).items():
        lines += ["", f"Skipped {name}: {why}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qwen2", type=Path, default=Path(os.environ.get("QWEN2_GGUF", QWEN2)))
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--redo", action="store_true", help="rerun models already in the JSON")
    parser.add_argument("--doc", action="store_true", help="only regenerate the docs table")
    args = parser.parse_args()
    result = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.doc:
        DOC.write_text(markdown(result))
        return
    result.setdefault("models", {})
    result["skipped"] = {}
    models = {}
    if args.qwen2.is_file():
        models["qwen2.5-coder-0.5b"] = str(args.qwen2)
    else:
        result["skipped"]["qwen2.5-coder-0.5b"] = (
            f"no GGUF at {args.qwen2}; run ../shared/models/fetch-qwen2.sh DIR"
        )
    models["smollm2-135m"] = DEFAULT_MODEL
    for key, name in models.items():
        if key in result["models"] and not args.redo:
            continue
        result["models"][key] = bench_model(name, args.windows, args.seq_len, args.batch)
        result["date"] = time.strftime("%Y-%m-%d")
        result["torch_threads"] = torch.get_num_threads()
        write_json_atomic(RESULTS, result)
        DOC.write_text(markdown(result))
    DOC.write_text(markdown(result))


if __name__ == "__main__":
    main()
