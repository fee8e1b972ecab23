"""Block-wise reconstruction (issue 25): the default conversion against the same conversion
followed by ``--reconstruct block``, at several T, against the prefixed ANN.

    python benchmarks/reconstruct.py [--windows 40] [--timesteps 8 6 4]
    python benchmarks/reconstruct.py --qwen2 PATH.gguf --windows 8 --timesteps 8 6
    python benchmarks/reconstruct.py --table    # only rewrite the docs table

One process per model: the model is converted once per T (default settings), scored on
WikiText-2 test windows of 512 tokens (the prefixed ANN — rotations and the chosen prefix,
the model the neurons approximate — and the SNN fast path), then its neurons are tuned by
``reconstruct_blocks`` on the conversion's own calibration windows and the SNN is scored
again. Writes benchmarks/results/reconstruct.json (rows are merged per model and T) and
docs/results-reconstruct.md. Run it alone: the seconds are wall times on this machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reconstruct.json"
DOC = ROOT / "docs" / "results-reconstruct.md"


def measure(model_name: str | None, label: str, timesteps: list[int], windows: int) -> list[dict]:
    import phasecode as pc
    from phasecode.api.model import calibration_texts
    from phasecode.calibration.text import token_batches
    from phasecode.conversion.handlers import Passthrough
    from phasecode.conversion.reconstruct import ReconstructSettings, reconstruct_blocks
    from phasecode.evaluation.perplexity import load_corpus, token_windows

    rows = []
    for steps in timesteps:
        model, tokenizer = pc.load_model(model_name) if model_name else pc.load_model()
        config = pc.ConversionConfig(timesteps=steps)
        start = time.perf_counter()
        snn = pc.convert(model, tokenizer, config, progress=False)
        convert_seconds = time.perf_counter() - start
        spiking = snn.spiking
        ids = token_windows(tokenizer, load_corpus("wikitext2"), 512, windows)

        ann, ann_seconds = score(spiking, ids, Passthrough())
        fitted, _ = score(spiking, ids)
        calibration = token_batches(
            tokenizer, calibration_texts(None), config.sequences, config.seq_len, add_bos=False
        )
        start = time.perf_counter()
        report = reconstruct_blocks(spiking, calibration, ReconstructSettings(), progress=False)
        reconstruct_seconds = time.perf_counter() - start
        tuned, snn_seconds = score(spiking, ids)
        layers = report["layers"]
        rows.append(
            {
                "model": label,
                "timesteps": steps,
                "windows": windows,
                "prefixed_ann_ppl": ann,
                "snn_ppl": fitted,
                "snn_reconstructed_ppl": tuned,
                "ratio": fitted / ann,
                "ratio_reconstructed": tuned / ann,
                "convert_seconds": convert_seconds,
                "reconstruct_seconds": reconstruct_seconds,
                "ann_eval_seconds": ann_seconds,
                "snn_eval_seconds": snn_seconds,
                "layers_improved": sum(r["loss_after"] < r["loss_before"] for r in layers),
                "layers": len(layers),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def score(spiking, ids, handler=None) -> tuple[float, float]:
    """(perplexity, seconds) of the SNN fast path, or of ``handler`` on the sites."""
    from phasecode.inference.nll import perplexity

    start = time.perf_counter()
    surgery = spiking.coded() if handler is None else spiking.surgery(handler)
    with surgery:
        ppl = perplexity(spiking.model, ids, spiking.prefix, 4, False).ppl
    return ppl, time.perf_counter() - start


def table(rows: list[dict]) -> str:
    lines = [
        "# Results: block-wise reconstruction",
        "",
        "Regenerate with `python benchmarks/reconstruct.py` (and `--qwen2 PATH.gguf`; `--table` "
        "rewrites this page from `benchmarks/results/reconstruct.json`). WikiText-2 test, "
        "windows of 512 tokens; ratios are against the **prefixed ANN** (rotations and the "
        "chosen prefix: the model the neurons approximate). *fitted*: the default conversion "
        "(Alg. 1/2, each site's neuron fitted to its own samples); *reconstructed*: the same "
        "neurons after `reconstruct_blocks` (each decoder layer's neurons tuned together on the "
        "layer's output, `--reconstruct block`). Seconds are wall times on this 2-core CPU, "
        "with the prefixed ANN's evaluation time beside them.",
        "",
        "| model | T | windows | prefixed ANN | SNN fitted | ×fitted | SNN reconstructed | "
        "×reconstructed | layers improved | convert (s) | reconstruct (s) | ANN eval (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], -r["timesteps"])):
        lines.append(
            f"| {r['model']} | {r['timesteps']} | {r['windows']} | {r['prefixed_ann_ppl']:.3f} | "
            f"{r['snn_ppl']:.3f} | ×{r['ratio']:.4f} | {r['snn_reconstructed_ppl']:.3f} | "
            f"×{r['ratio_reconstructed']:.4f} | {r['layers_improved']}/{r['layers']} | "
            f"{r['convert_seconds']:.0f} | {r['reconstruct_seconds']:.0f} | "
            f"{r['ann_eval_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qwen2", type=Path, help="the Qwen2.5-Coder-0.5B GGUF (fetch-qwen2.sh)")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[8, 6, 4])
    parser.add_argument("--table", action="store_true", help="only rewrite the docs table")
    args = parser.parse_args()
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if not args.table:
        label = "Qwen2.5-Coder-0.5B" if args.qwen2 else "SmolLM2-135M"
        name = str(args.qwen2) if args.qwen2 else None
        new = measure(name, label, args.timesteps, args.windows)
        done = {(r["model"], r["timesteps"], r["windows"]) for r in new}
        rows = [r for r in rows if (r["model"], r["timesteps"], r["windows"]) not in done] + new
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    DOC.write_text(table(rows))
    print(DOC.read_text())


if __name__ == "__main__":
    main()
