"""Benchmark: convert a model with each method / T / grains and score WikiText-2 perplexity.

Rows (same windows for all): the ANN; LAS and mgpc with 1, 2, 3 grains at T = 6, 8, 10 (with
rotation and prefix); mgpc T=8 with 2 grains without rotation, without prefix, without both.
Calibration is shared by all rows with the same outlier handling (the grid loop of
``phasecode.comparison.grid``, which `phasecode compare` also runs). Results are appended to
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

from phasecode.artifacts import write_json_atomic
from phasecode.comparison.grid import Cell, calibrations, convert_cell
from phasecode.evaluation.perplexity import load_corpus, token_windows
from phasecode.inference.nll import perplexity
from phasecode.models.loading import load_model
from phasecode.models.resolve import DEFAULT_MODEL
from phasecode.settings import SamplingSettings, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "conversion.json"
DOC = ROOT / "docs" / "results-conversion.md"
MAIN = [Cell("las", t) for t in (6, 8, 10)] + [
    Cell("mgpc", t, g, "alternating") for t in (6, 8, 10) for g in (1, 2, 3)
]
ABLATIONS = [
    Cell("mgpc", 8, 2, "alternating", rotate=rotate, prefix=prefix)
    for rotate, prefix in ((False, True), (True, False), (False, False))
]


def key(cell: Cell) -> str:
    return (
        f"{cell.method}-T{cell.timesteps}-g{cell.grains}-"
        f"rot{int(cell.rotate)}-pre{int(cell.prefix)}"
    )


def run(model_name: str, windows_n: int, seq_len: int, batch: int) -> None:
    done = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": {}}
    model, tokenizer = load_model(model_name)
    windows = token_windows(tokenizer, load_corpus("wikitext2"), seq_len, windows_n)
    if "ann" not in done:
        ann = perplexity(model, windows, batch_size=batch, progress=False)
        done["ann"] = {"ppl": ann.ppl, "seconds": ann.seconds}
        done.update(model=model_name, windows=len(windows), seq_len=seq_len)
        _save(done)
    todo = [cell for cell in MAIN + ABLATIONS if key(cell) not in done["rows"]]
    for cell, calibrated in calibrations(lambda: load_model(model_name), todo, SamplingSettings()):
        spiking = convert_cell(calibrated, cell, TrainConfig())
        with spiking.coded():
            snn = perplexity(
                spiking.model, windows, spiking.prefix, batch_size=batch, progress=False
            )
        seconds = spiking.report["seconds"]
        row = {
            "method": cell.method,
            "timesteps": cell.timesteps,
            "grains": cell.grains,
            "rotate": cell.rotate,
            "prefix": cell.prefix,
            "ppl": snn.ppl,
            "ratio": snn.ppl / done["ann"]["ppl"],
            "mean_site_ratio": spiking.report["mean_ratio"],
            "calibration_seconds": seconds["calibration"],
            "training_seconds": seconds["training"],
            "eval_seconds": snn.seconds,
        }
        done["rows"][key(cell)] = row
        _save(done)
        print(json.dumps(row), flush=True)


def _save(result: dict) -> None:
    result["date"] = time.strftime("%Y-%m-%d")
    result["torch_threads"] = torch.get_num_threads()
    write_json_atomic(RESULTS, result)
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
