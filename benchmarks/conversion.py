"""Benchmark: convert a model with each method / T / grains and score WikiText-2 perplexity.

Rows (same windows for all): the ANN; LAS and mgpc with 1, 2, 3 grains at T = 6, 8, 10 (with
rotation and prefix); mgpc T=8 with 2 grains without rotation, without prefix, without both.
Calibration is shared by all rows with the same outlier handling. Results are appended to
benchmarks/results/conversion.json as each row finishes, and a rerun skips finished rows;
docs/results-conversion.md is regenerated from the JSON.

    python benchmarks/conversion.py [--model smollm2-135m] [--windows 40] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from phasecode.conversion.convert import calibrate, fit_spiking
from phasecode.evaluation.perplexity import load_corpus, perplexity, token_windows
from phasecode.fitting import FitSettings, SamplingSettings
from phasecode.models.loading import DEFAULT_MODEL, load_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "conversion.json"
DOC = ROOT / "docs" / "results-conversion.md"
MAIN = [("las", t, 1) for t in (6, 8, 10)] + [("mgpc", t, g) for t in (6, 8, 10) for g in (1, 2, 3)]
ABLATIONS = {
    (False, True): [("mgpc", 8, 2)],
    (True, False): [("mgpc", 8, 2)],
    (False, False): [("mgpc", 8, 2)],
}


def key(method: str, t: int, grains: int, rotate: bool, prefix: bool) -> str:
    return f"{method}-T{t}-g{grains}-rot{int(rotate)}-pre{int(prefix)}"


def run(model_name: str, windows_n: int, seq_len: int, batch: int) -> None:
    done = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": {}}
    model, tokenizer = load_model(model_name)
    windows = token_windows(tokenizer, load_corpus("wikitext2"), seq_len, windows_n)
    if "ann" not in done:
        ann = perplexity(model, windows, batch_size=batch, progress=False)
        done["ann"] = {"ppl": ann.ppl, "seconds": ann.seconds}
        done.update(model=model_name, windows=len(windows), seq_len=seq_len)
        _save(done)
    plan = {(True, True): MAIN, **ABLATIONS}
    for (rotate, prefix), rows in plan.items():
        todo = [r for r in rows if key(*r, rotate, prefix) not in done["rows"]]
        if not todo:
            continue
        model, tokenizer = load_model(model_name)
        cal = calibrate(
            model, tokenizer, SamplingSettings(), rotate, 3 if prefix else None, progress=False
        )
        for method, t, grains in todo:
            spiking = fit_spiking(cal, FitSettings(method, t, grains), progress=False)
            with spiking.coded():
                snn = perplexity(model, windows, spiking.prefix, batch_size=batch, progress=False)
            seconds = spiking.report["seconds"]
            row = {
                "method": method,
                "timesteps": t,
                "grains": grains,
                "rotate": rotate,
                "prefix": prefix,
                "ppl": snn.ppl,
                "ratio": snn.ppl / done["ann"]["ppl"],
                "mean_site_ratio": spiking.report["mean_ratio"],
                "calibration_seconds": seconds["calibration"],
                "training_seconds": seconds["training"],
                "eval_seconds": snn.seconds,
            }
            done["rows"][key(method, t, grains, rotate, prefix)] = row
            _save(done)
            print(json.dumps(row), flush=True)


def _save(result: dict) -> None:
    result["date"] = time.strftime("%Y-%m-%d")
    result["torch_threads"] = torch.get_num_threads()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    DOC.write_text(markdown(result))


def markdown(result: dict) -> str:
    ann = result["ann"]
    lines = [
        "# Spiking conversion: WikiText-2 perplexity",
        "",
        f"Model `{result['model']}`, WikiText-2 test, {result['windows']} windows of "
        f"{result['seq_len']} tokens (GPTQ protocol), the same windows for every row. "
        f"ANN perplexity {ann['ppl']:.3f} ({ann['seconds']:.1f} s). Calibration: C4 sample, "
        "16 × 256 tokens; conversion time = calibration (shared by rows with the same outlier "
        "handling) + training. Regenerate with `python benchmarks/conversion.py` "
        "(resumable; JSON in `benchmarks/results/conversion.json`).",
        "",
        "| method | T | grains | rotation | prefix | PPL | ÷ ANN | site ratio | calib s | "
        "train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"].values():
        lines.append(
            f"| {r['method']} | {r['timesteps']} | {r['grains']} | {r['rotate']} | "
            f"{r['prefix']} | {r['ppl']:.3f} | {r['ratio']:.4f} | {r['mean_site_ratio']:.3f} | "
            f"{r['calibration_seconds']:.1f} | {r['training_seconds']:.1f} | "
            f"{r['eval_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    run(args.model, args.windows, args.seq_len, args.batch)


if __name__ == "__main__":
    main()
