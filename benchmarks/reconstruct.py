"""What each piece of issue 25 gives on its own, against the prefixed ANN: the neuron code
(binary phase code, signed-digit), the neuron's range (``--neuron-range peak|fitted``),
block-wise reconstruction (``--reconstruct block``), and what the attention probabilities'
neurons cost (a diagnostic), at several T.

    python benchmarks/reconstruct.py [--windows 40] [--timesteps 8 6 4] [--code signed-digit]
    python benchmarks/reconstruct.py --qwen2 PATH.gguf --windows 8 --timesteps 8 6
    python benchmarks/reconstruct.py --no-reconstruct    # skip the (slow) reconstruction
    python benchmarks/reconstruct.py --neuron-range peak fitted --no-diagnostic
    python benchmarks/reconstruct.py --text wikitext2-valid    # held-out text (see below)
    python benchmarks/reconstruct.py --code signed-digit --energy-budget 0.7 \
        --budget-sensitivity measured fisher --timesteps 8 --no-reconstruct --no-diagnostic
    python benchmarks/reconstruct.py --code signed-digit --energy-budget 0.7 --timesteps 8 \
        --no-diagnostic [--tune output]   # a budgeted conversion that reconstructs
    python benchmarks/reconstruct.py --table    # only rewrite the docs table

One process per model: the model is converted once per code, range and T (other settings
default), scored on windows of 512 tokens of ``--text`` (WikiText-2 test by default;
``wikitext2-valid`` is held out: no conversion calibrates on it and no setting was chosen on
it) as the prefixed ANN (rotations and the chosen prefix, the model the neurons approximate)
and as the SNN fast path, scored again with the probability sites passed through (their exact
softmax output goes into P·V: the most any coding of the probabilities could give back), then
its neurons are tuned by ``reconstruct_blocks`` on the conversion's own calibration windows
and the SNN is scored again. Writes benchmarks/results/reconstruct.json (rows are merged per
model, code, range, T, text, windows and budget: a new row replaces the old one whole; rows from
before the range option were measured at the fitted range, rows without a text on WikiText-2
test) and docs/results-reconstruct.md. Run it
alone: the seconds are wall times on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from phasecode.settings import BUDGET_SENSITIVITIES, CODES, NEURON_RANGES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reconstruct.json"
DOC = ROOT / "docs" / "results-reconstruct.md"


def measure(
    model_name: str | None,
    label: str,
    codes: list[str],
    ranges: list[str],
    timesteps: list[int],
    windows: int,
    reconstruct: bool,
    diagnostic: bool,
    text: str,
    corpus: str,
    budget: float | None = None,
    sensitivities: list[str | None] | None = None,
    tune: str = "block",
    seed: int = 0,
) -> list[dict]:
    import phasecode as pc
    from phasecode.api.model import calibration_texts
    from phasecode.calibration.text import token_batches
    from phasecode.conversion.handlers import Passthrough
    from phasecode.conversion.reconstruct import (
        OutputSettings,
        ReconstructSettings,
        reconstruct_blocks,
        reconstruct_output,
    )
    from phasecode.evaluation.perplexity import token_windows

    rows, ids = [], None
    grid = itertools.product(codes, ranges, timesteps, sensitivities or [None])
    for code, neuron_range, steps, sensitivity in grid:
        model, tokenizer = pc.load_model(model_name) if model_name else pc.load_model()
        config = pc.ConversionConfig(
            timesteps=steps,
            code=code,
            neuron_range=neuron_range,
            energy_budget=budget,
            budget_sensitivity=sensitivity,
            seed=seed,
            # under a budget the conversion itself reconstructs (held to the spike energy the
            # budget leaves); its row is the tuned model's, the row without is the fitted
            # one's (conversion is deterministic)
            reconstruct=tune if reconstruct and budget is not None else "none",
        )
        start = time.perf_counter()
        snn = pc.convert(model, tokenizer, config, progress=False)
        convert_seconds = time.perf_counter() - start
        spiking = snn.spiking
        if ids is None:  # one tokenizer per process: the same windows for every row
            ids = token_windows(tokenizer, corpus, 512, windows)

        ann, ann_seconds = score(spiking, ids, Passthrough())
        fitted, snn_seconds = score(spiking, ids)
        row = {
            "model": label,
            "code": code,
            "neuron_range": neuron_range,
            "range_chosen": spiking.report["neuron_range_choice"]["chosen"],
            "timesteps": steps,
            "text": text,
            "windows": windows,
            "seed": seed,
            "prefixed_ann_ppl": ann,
            "snn_ppl": fitted,
            "ratio": fitted / ann,
            "convert_seconds": convert_seconds,
            "ann_eval_seconds": ann_seconds,
            "snn_eval_seconds": snn_seconds,
        }
        if budget is not None:
            record = spiking.report["energy_budget"]
            row.update(
                energy_budget=budget,
                budget_sensitivity=record["sensitivity"]["source"],
                predicted_energy=record["predicted_ratio"],
                energy_met=record["met"],
                sensitivity_factors={
                    kind: r["factor"] for kind, r in record["sensitivity"].get("kinds", {}).items()
                },
                reconstruct=config.reconstruct,
            )
            if config.reconstruct != "none":
                tuned = spiking.report["reconstruction"]
                row.update(
                    predicted_energy_fitted=record["predicted_ratio_fitted"],
                    reconstruct_seconds=tuned["seconds"],
                )
                if "layers" in tuned:
                    layers = tuned["layers"]
                    improved = sum(r["loss_after"] < r["loss_before"] for r in layers)
                    row.update(layers_improved=improved, layers=len(layers))
                else:
                    row.update(
                        kl_fitted=tuned["kl_before"],
                        kl_tuned=tuned["kl_tuned"],
                        tuned_kept=tuned["kept"],
                        passes_kept=tuned.get("passes_kept"),
                    )
        if diagnostic:
            exact_probs, _ = score(spiking, ids, without_probs(spiking))
            row["ratio_exact_probs"] = exact_probs / ann
        if reconstruct and budget is None:
            calibration = token_batches(
                tokenizer,
                calibration_texts(None),
                config.sequences,
                config.seq_len,
                add_bos=False,
            )
            start = time.perf_counter()
            if tune == "output":
                report = reconstruct_output(spiking, calibration, OutputSettings(), progress=False)
                seconds = time.perf_counter() - start
                tuned, _ = score(spiking, ids)
                row.update(
                    snn_output_ppl=tuned,
                    ratio_output=tuned / ann,
                    output_seconds=seconds,
                    kl_fitted=report["kl_before"],
                    kl_tuned=report["kl_tuned"],
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            report = reconstruct_blocks(spiking, calibration, ReconstructSettings(), progress=False)
            seconds = time.perf_counter() - start
            tuned, _ = score(spiking, ids)
            layers = report["layers"]
            row.update(
                snn_reconstructed_ppl=tuned,
                ratio_reconstructed=tuned / ann,
                reconstruct_seconds=seconds,
                layers_improved=sum(r["loss_after"] < r["loss_before"] for r in layers),
                layers=len(layers),
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def without_probs(spiking):
    """The fast path's coder with the attention probabilities' neurons left out."""
    from phasecode.conversion.handlers import Coder
    from phasecode.models.sites import site_kind

    keep = [i for i, name in enumerate(spiking.sites) if site_kind(name) != "probs"]
    index = torch.tensor(keep)
    return Coder(spiking.table.select(index), [spiking.sites[i] for i in keep])


def score(spiking, ids, handler=None) -> tuple[float, float]:
    """(perplexity, seconds) of the SNN fast path, or of ``handler`` on the sites."""
    from phasecode.inference.nll import perplexity

    start = time.perf_counter()
    surgery = spiking.coded() if handler is None else spiking.surgery(handler)
    with surgery:
        ppl = perplexity(spiking.model, ids, spiking.prefix, 4, False).ppl
    return ppl, time.perf_counter() - start


def _cell(row: dict, key: str, fmt: str, mark: str = "") -> str:
    """``row[key]`` formatted, or a dash where this row did not measure it."""
    return mark + format(row[key], fmt) if key in row else "–"


def table(rows: list[dict]) -> str:
    lines = [
        "# Results: what each piece of the conversion costs (issue 25)",
        "",
        "Regenerate with `python benchmarks/reconstruct.py` (and `--qwen2 PATH.gguf`; `--table` "
        "rewrites this page from `benchmarks/results/reconstruct.json`). Windows of 512 tokens "
        "of WikiText-2 test (*text* `wikitext2`) or of its validation split (`wikitext2-valid`: "
        "held out, no conversion calibrates on it and no setting was chosen on it); ratios "
        "are against the **prefixed ANN** (rotations and the "
        "chosen prefix: the model the neurons approximate). *fitted*: the conversion with that "
        "code (Alg. 1/2, each site's neuron fitted to its own samples; every other setting "
        "default); *range*: `peak` widens each trained neuron until it reaches the largest "
        "value its site showed in calibration, `fitted` keeps the squared-error fit's range "
        "(every row measured before the option existed), `auto` (the default) keeps the one "
        "of fitted, halfway and peak whose coded model has the lowest calibration loss; "
        "*seed*: the calibration sample's (`ConversionConfig.seed`; 0, the default, for rows "
        "from before the option); *probs exact*: a diagnostic, the same SNN with the "
        "attention probabilities' neurons passed through, so the exact softmax output "
        "enters P·V (the most any coding of the probabilities could give back); "
        "*reconstructed*: the fitted neurons after "
        "`reconstruct_blocks` (each decoder layer's neurons tuned together on the layer's "
        "output, `--reconstruct block`); *output-tuned*: the fitted neurons after "
        "`reconstruct_output` (all neurons tuned together on the next-token distribution's "
        "KL to the prepared ANN's, `--reconstruct output`). Seconds are wall times on this "
        "2-core CPU, with the prefixed ANN's evaluation time beside them.",
        "",
        "| model | code | range | T | text | windows | seed | prefixed ANN | SNN | ×SNN | "
        "×probs exact | ×reconstructed | layers improved | ×output-tuned | convert (s) | "
        "reconstruct (s) | output tuning (s) | ANN eval (s) | SNN eval (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(
        (r for r in rows if "energy_budget" not in r),
        key=lambda r: (
            r["model"],
            r["code"],
            _range(r),
            -r["timesteps"],
            _text(r),
            r["windows"],
            _seed(r),
        ),
    )
    for r in order:
        improved = f"{r['layers_improved']}/{r['layers']}" if "layers" in r else "–"
        lines.append(
            f"| {r['model']} | {r['code']} | {_range_cell(r)} | {r['timesteps']} | "
            f"{_text(r)} | {r['windows']} | {_seed(r)} | "
            f"{r['prefixed_ann_ppl']:.3f} | {r['snn_ppl']:.3f} | ×{r['ratio']:.4f} | "
            f"{_cell(r, 'ratio_exact_probs', '.4f', '×')} | "
            f"{_cell(r, 'ratio_reconstructed', '.4f', '×')} | "
            f"{improved} | {_cell(r, 'ratio_output', '.4f', '×')} | {r['convert_seconds']:.0f} | "
            f"{_cell(r, 'reconstruct_seconds', '.0f')} | {_cell(r, 'output_seconds', '.0f')} | "
            f"{r['ann_eval_seconds']:.0f} | {_cell(r, 'snn_eval_seconds', '.0f')} |"
        )
    return "\n".join(lines + budget_table(rows)) + "\n"


def budget_table(rows: list[dict]) -> list[str]:
    """The rows converted under an energy budget (``--energy-budget``), by sensitivity."""
    budgeted = sorted(
        (r for r in rows if "energy_budget" in r),
        key=lambda r: (
            r["model"],
            -r["energy_budget"],
            -r["timesteps"],
            r["budget_sensitivity"],
            r.get("reconstruct", "none"),
            _seed(r),
        ),
    )
    if not budgeted:
        return []
    lines = [
        "",
        "## Under an energy budget (price mode)",
        "",
        "*sensitivity*: `fisher` prices each site's spikes by ½·F·MSE alone; `measured` "
        "(the default) corrects F per site kind by the loss that kind's neurons add on "
        "unsampled calibration text, then trains again (docs/energy.md). *predicted total*: "
        "the trained neurons' SNN/ANN total energy on 512 tokens (met within 1 %). Factors "
        "other than 1 are listed. *reconstruct* `block`: the conversion then tunes each "
        "layer's neurons on its output; `output`: all neurons together on KL(prepared ANN ‖ "
        "SNN) of the next-token distribution; either with the spike energy held to what the "
        "budget leaves (the fitted neurons' times the headroom under the budget; the `block` "
        "rows were measured holding each layer to its fitted neurons' own energy). The "
        "predicted total before tuning is in brackets; convert includes the tuning.",
        "",
        "| model | code | T | budget | sensitivity | range | reconstruct | text | windows | "
        "seed | prefixed ANN | SNN | ×SNN | predicted total | factors | convert (s) | "
        "ANN eval (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in budgeted:
        factors = ", ".join(
            f"{kind} ×{f:.3g}"
            for kind, f in sorted(r["sensitivity_factors"].items(), key=lambda kv: -kv[1])
            if f != 1.0
        )
        reconstructed = _reconstruct_cell(r)
        before = r.get("predicted_energy_fitted")
        fitted = "" if before is None else f" ({before:.3f})"
        lines.append(
            f"| {r['model']} | {r['code']} | {r['timesteps']} | {r['energy_budget']} | "
            f"{r['budget_sensitivity']} | {_range_cell(r)} | {reconstructed} | {_text(r)} | "
            f"{r['windows']} | {_seed(r)} | {r['prefixed_ann_ppl']:.3f} | {r['snn_ppl']:.3f} | "
            f"×{r['ratio']:.4f} | {r['predicted_energy']:.3f}{fitted}"
            f"{'' if r['energy_met'] else ' (missed)'} | "
            f"{factors or '–'} | {r['convert_seconds']:.0f} | {r['ann_eval_seconds']:.0f} |"
        )
    return lines


def _reconstruct_cell(row: dict) -> str:
    """The tuning asked for, and how much of it was kept (rows from before the record: all)."""
    how = row.get("reconstruct", "none")
    if row.get("tuned_kept") is False:
        return f"{how} (not kept: the fitted neurons)"
    passes = row.get("passes_kept")
    return how if passes is None else f"{how} (kept after {passes} passes)"


def _range(row: dict) -> str:
    """The row's neuron range: rows from before the option were measured at the fitted one."""
    return row.get("neuron_range", "fitted")


def _text(row: dict) -> str:
    """The row's evaluation text: rows from before the option were on WikiText-2 test."""
    return row.get("text", "wikitext2")


def _seed(row: dict) -> int:
    """The row's calibration seed: rows from before the option used the default, 0."""
    return row.get("seed", 0)


def _range_cell(row: dict) -> str:
    """The range asked for, and what ``auto`` chose."""
    asked = _range(row)
    return f"{asked} → {row['range_chosen']}" if asked == "auto" else asked


def _key(row: dict) -> tuple:
    return (
        row["model"],
        row["code"],
        _range(row),
        row["timesteps"],
        _text(row),
        row["windows"],
        row.get("energy_budget"),
        row.get("budget_sensitivity"),
        row.get("reconstruct", "none") if "energy_budget" in row else None,
        _seed(row),
    )


def merge(rows: list[dict], new: list[dict]) -> list[dict]:
    """``rows`` with each of ``new`` in place of the row with its key. A new row that
    reproduces the old one's fitted perplexity (conversion is deterministic) keeps what the
    old one measured and it did not (the other tuning, the diagnostic)."""
    old = {_key(r): r for r in rows}
    for i, row in enumerate(new):
        before = old.get(_key(row))
        if before is not None and before["snn_ppl"] == row["snn_ppl"]:
            new[i] = before | row
    done = {_key(r) for r in new}
    return [r for r in rows if _key(r) not in done] + new


def read_text(parser: argparse.ArgumentParser, text: str) -> str:
    """The ``--text`` corpus, or the parser's one-line error."""
    from phasecode.errors import PhasecodeError
    from phasecode.evaluation.perplexity import load_corpus

    try:
        return load_corpus(text)
    except PhasecodeError as error:
        parser.error(str(error))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qwen2", type=Path, help="the Qwen2.5-Coder-0.5B GGUF (fetch-qwen2.sh)")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[8, 6, 4])
    parser.add_argument("--code", nargs="+", default=list(CODES), choices=CODES)
    parser.add_argument("--neuron-range", nargs="+", default=["auto"], choices=NEURON_RANGES)
    parser.add_argument(
        "--no-diagnostic", action="store_true", help="skip the probabilities-exact diagnostic"
    )
    parser.add_argument(
        "--no-reconstruct", action="store_true", help="skip the block-wise reconstruction"
    )
    parser.add_argument(
        "--text", default="wikitext2", help="wikitext2 (test), wikitext2-valid (held out), c4"
    )
    parser.add_argument(
        "--energy-budget", type=float, metavar="RATIO", help="convert under this energy budget"
    )
    parser.add_argument(
        "--budget-sensitivity",
        nargs="+",
        choices=BUDGET_SENSITIVITIES,
        help="with --energy-budget: one row per sensitivity (default: the config's default)",
    )
    parser.add_argument(
        "--tune",
        choices=("block", "output"),
        default="block",
        help="how the fitted neurons are tuned after training: block-wise or on the output "
        "(--no-reconstruct: not at all)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="the calibration sample's seed (ConversionConfig.seed)"
    )
    parser.add_argument("--table", action="store_true", help="only rewrite the docs table")
    args = parser.parse_args()
    if args.budget_sensitivity and args.energy_budget is None:
        parser.error("--budget-sensitivity needs --energy-budget")
    if args.energy_budget is not None and not args.energy_budget > 0:
        parser.error(f"--energy-budget must be > 0, got {args.energy_budget}")
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if not args.table:
        corpus = read_text(parser, args.text)  # a bad name fails before any model loads
        label = "Qwen2.5-Coder-0.5B" if args.qwen2 else "SmolLM2-135M"
        name = str(args.qwen2) if args.qwen2 else None
        new = measure(
            name,
            label,
            args.code,
            args.neuron_range,
            args.timesteps,
            args.windows,
            not args.no_reconstruct,
            not args.no_diagnostic,
            args.text,
            corpus,
            args.energy_budget,
            args.budget_sensitivity,
            args.tune,
            args.seed,
        )
        rows = merge(rows, new)
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    DOC.write_text(table(rows))
    print(DOC.read_text())


if __name__ == "__main__":
    main()
