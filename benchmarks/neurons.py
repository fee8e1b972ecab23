"""Benchmark: every linear-input site of a model, T ∈ {6, 8, 10}, LAS and mgpc with 1-3 grains.

All rows share one set of activation samples (fitted on the training half, scored on the
held-out half). Writes benchmarks/results/neurons.json and regenerates docs/results-neurons.md.

    python benchmarks/neurons.py [--model smollm2-135m] [--samples 8000]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from phasecode.calibration.sampling import sample_sites
from phasecode.models.loading import load_model
from phasecode.models.resolve import DEFAULT_MODEL
from phasecode.settings import FitSettings, SamplingSettings
from phasecode.training.fit import fit_codes, score_sites

ROOT = Path(__file__).resolve().parent.parent
ROWS = [("las", 1), ("mgpc", 1), ("mgpc", 2), ("mgpc", 3)]


def run(model_name: str, samples: int, timesteps: list[int]) -> dict:
    model, tokenizer = load_model(model_name)
    data = sample_sites(model, tokenizer, SamplingSettings(samples=samples), progress=False)
    kinds = sorted({s.kind for s in data.sites})
    rows = []
    for t in timesteps:
        for method, grains in ROWS:
            fit = fit_codes(data.train, FitSettings(method, t, grains), progress=False)
            scores = score_sites(fit.table, data.train, data.heldout)
            per_kind = {
                k: float(scores["ratio"][[s.kind == k for s in data.sites]].mean()) for k in kinds
            }
            rows.append(
                {
                    "method": method,
                    "grains": grains,
                    "timesteps": t,
                    "mean_ratio": float(scores["ratio"].mean()),
                    "median_ratio": float(scores["ratio"].median()),
                    "mean_uniform_ratio": float(scores["uniform_ratio"].mean()),
                    "sites_below_uniform": int((scores["mse"] < scores["uniform_mse"]).sum()),
                    "ratio_by_kind": per_kind,
                    "train_seconds": fit.seconds,
                }
            )
            print(json.dumps(rows[-1]))
    return {
        "model": model_name,
        "sites": len(data.sites),
        "samples_per_site": {"train": samples, "heldout": samples},
        "sample_seconds": data.seconds,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
        "date": time.strftime("%Y-%m-%d"),
    }


def markdown(result: dict) -> str:
    lines = [
        "# Neuron fit on every linear-input site",
        "",
        f"Model `{result['model']}`, {result['sites']} sites, "
        f"{result['samples_per_site']['train']} training + "
        f"{result['samples_per_site']['heldout']} held-out samples per site, BOS prefix and "
        f"online Hadamard before `down_proj`. Sampling took {result['sample_seconds']:.1f} s. "
        "Ratios are held-out MSE ÷ Lloyd-Max held-out MSE (same number of levels, fitted on "
        "the same training samples); *uniform* is the best-clipped uniform quantizer.",
        "",
        "Regenerate with `python benchmarks/neurons.py` (writes "
        "`benchmarks/results/neurons.json` and this file; `--render` only rewrites this file "
        "from the JSON).",
        "",
        "Caveats: where 2^T levels approach the training-sample count (T = 10: 1024 levels, "
        "8000 samples) the Lloyd-Max quantizer overfits its training half and the ratio drops "
        "below 1, so it is no longer a bound; compare with the uniform column there. Lloyd "
        "iterations reach a local optimum, which makes the bound slightly loose. Training "
        "times are wall-clock on a shared 2-core machine and vary with its load.",
        "",
        "| T | method | grains | mean ratio | median | uniform ratio | sites < uniform | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['timesteps']} | {r['method']} | {r['grains']} | {r['mean_ratio']:.3f} | "
            f"{r['median_ratio']:.3f} | {r['mean_uniform_ratio']:.3f} | "
            f"{r['sites_below_uniform']}/{result['sites']} | {r['train_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--samples", type=int, default=8000)
    parser.add_argument("--timesteps", default="6,8,10")
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown")
    args = parser.parse_args()
    out = ROOT / "benchmarks" / "results" / "neurons.json"
    if args.render:
        result = json.loads(out.read_text())
    else:
        result = run(args.model, args.samples, [int(t) for t in args.timesteps.split(",")])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    (ROOT / "docs" / "results-neurons.md").write_text(markdown(result))
    print("wrote docs/results-neurons.md" + ("" if args.render else f" and {out}"))


if __name__ == "__main__":
    main()
