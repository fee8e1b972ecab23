"""Command-line interface: `phasecode neurons | convert | eval | run | compare`; the spiking
side (`simulate | energy | generate`) is in ``spiking_cli``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phasecode.artifacts import write_json_atomic
from phasecode.comparison.options import add_arguments as add_compare_arguments
from phasecode.errors import PhasecodeError
from phasecode.fitting import METHODS, FitSettings, SamplingSettings
from phasecode.models.loading import DEFAULT_MODEL
from phasecode.models.quantize import WEIGHT_BITS
from phasecode.spiking_cli import SPIKING_COMMANDS, add_spiking_commands
from phasecode.training.alternating import MODES, TrainConfig


def _add_neuron_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local path or smollm2-135m")
    parser.add_argument(
        "--timesteps", "-T", type=int, default=8, help="timesteps T (1..32; ttfs: 1..128)"
    )
    parser.add_argument("--grains", type=int, default=2, help="number of bases (grains)")
    parser.add_argument(
        "--lr-threshold",
        type=float,
        default=TrainConfig.lr_threshold,
        help="η1 of Alg. 1 (steps on θ, h, relative to their start values)",
    )
    parser.add_argument("--rounds", type=int, default=TrainConfig.rounds, help="N of Alg. 1")
    parser.add_argument("--method", default="mgpc", choices=METHODS, metavar="|".join(METHODS))
    parser.add_argument(
        "--mode",
        default=TrainConfig.mode,
        choices=MODES,
        metavar="|".join(MODES),
        help="mgpc training: Alg. 1, all parameters at once (Table 6) or h = θ (Table 7)",
    )
    parser.add_argument(
        "--weight-bits",
        type=int,
        choices=WEIGHT_BITS,
        metavar="|".join(map(str, WEIGHT_BITS)),
        help="fake-quantize the decoder linears per output channel first (Table 8)",
    )
    parser.add_argument("--samples", type=int, default=10_000, help="training samples per site")
    parser.add_argument("--calibration", type=Path, help="calibration text (.jsonl or .txt)")
    parser.add_argument("--sequences", type=int, default=16, help="calibration sequences")
    parser.add_argument("--seq-len", type=int, default=256, help="calibration sequence length")
    parser.add_argument("--no-rotate", action="store_true", help="no Hadamard before down_proj")
    parser.add_argument("--no-prefix", action="store_true", help="no BOS prefix token")
    parser.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phasecode",
        description="Spiking LLMs by ANN-to-SNN conversion with multi-granularity phase coding.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    neurons = sub.add_parser(
        "neurons", parents=[common], help="fit a neuron per activation site and score it"
    )
    _add_neuron_options(neurons)
    neurons.add_argument("--out", type=Path, help="save the neurons as an artifact directory")
    neurons.add_argument("--json", type=Path, help="write the per-site report as JSON")

    convert = sub.add_parser(
        "convert", parents=[common], help="convert a model into a spiking model artifact"
    )
    _add_neuron_options(convert)
    convert.add_argument("--no-lm-head", action="store_true", help="keep the lm_head input analog")
    convert.add_argument(
        "--balance", action="store_true", help="balance the SiLU·up operands per channel"
    )
    convert.add_argument("--out", type=Path, required=True, help="artifact directory")

    evaluate = sub.add_parser(
        "eval",
        parents=[common],
        help="perplexity and zero-shot accuracy of the ANN and the spiking model",
    )
    evaluate.add_argument("artifact", type=Path)
    _add_eval_options(evaluate)

    run = sub.add_parser(
        "run", parents=[common], help="the main job: convert the default model and evaluate it"
    )
    run.add_argument("--out", type=Path, default=Path("out/smollm2-135m-T8"))
    run.add_argument("--limit", type=int, default=8, help="WikiText-2 windows to evaluate")
    run.add_argument("--json", type=Path, help="write the evaluation as JSON")

    compare = sub.add_parser(
        "compare", parents=[common], help="convert with every method / T / setting and tabulate"
    )
    add_compare_arguments(compare)
    add_spiking_commands(sub, common)
    return parser


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ppl", default="wikitext2", help='comma list: wikitext2,c4 ("" for none)')
    parser.add_argument("--text", type=Path, action="append", default=[], help="a text file")
    parser.add_argument(
        "--tasks",
        default="",
        help="zero-shot accuracy: comma list of arc_easy,arc_challenge,piqa,winogrande",
    )
    parser.add_argument("--seq-len", type=int, default=512, help="evaluation window length")
    parser.add_argument(
        "--limit", type=int, help="the first N perplexity windows and N examples per task only"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument(
        "--task-batch-size", type=int, default=16, help="task requests per forward pass"
    )
    parser.add_argument("--json", type=Path, help="write the evaluation as JSON")


def _fit_settings(args: argparse.Namespace) -> FitSettings:
    if args.lr_threshold <= 0 or args.rounds < 1:
        raise PhasecodeError("--lr-threshold must be > 0 and --rounds >= 1")
    train = TrainConfig(lr_threshold=args.lr_threshold, rounds=args.rounds, mode=args.mode)
    return FitSettings(args.method, args.timesteps, args.grains, train)


def _sampling(args: argparse.Namespace) -> SamplingSettings:
    defaults = SamplingSettings()
    if args.samples < 16:
        raise PhasecodeError(f"--samples must be at least 16, got {args.samples}")
    return SamplingSettings(
        samples=args.samples,
        calibration=args.calibration or defaults.calibration,
        sequences=args.sequences,
        seq_len=args.seq_len,
        prefix_bos=not args.no_prefix,
        rotate_down=not args.no_rotate,
        seed=args.seed,
    )


def run_neurons(args: argparse.Namespace) -> int:
    from phasecode.jobs.neurons import neurons_job

    settings = _fit_settings(args)
    report = neurons_job(
        args.model,
        settings,
        _sampling(args),
        out=args.out,
        progress=not args.quiet,
        weight_bits=args.weight_bits,
    )
    if args.json:
        write_json_atomic(args.json, report)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from phasecode.jobs.convert import convert_job

    settings = _fit_settings(args)
    convert_job(
        args.model,
        settings,
        _sampling(args),
        args.out,
        rotate=not args.no_rotate,
        prefix=not args.no_prefix,
        lm_head=not args.no_lm_head,
        progress=not args.quiet,
        balance=args.balance,
        weight_bits=args.weight_bits,
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from phasecode.jobs.evaluate import evaluate_job

    corpora = [c for c in args.ppl.split(",") if c]
    if args.batch_size < 1 or args.task_batch_size < 1:
        raise PhasecodeError("--batch-size and --task-batch-size must be >= 1")
    report = evaluate_job(
        args.artifact,
        corpora,
        args.text,
        args.seq_len,
        args.limit,
        progress=not args.quiet,
        batch_size=args.batch_size,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        task_batch_size=args.task_batch_size,
    )
    if args.json:
        write_json_atomic(args.json, report)
    return 0


def run_main_job(args: argparse.Namespace) -> int:
    """Convert SmolLM2-135M at T=8 with 2 grains, then evaluate WikiText-2 on a subset."""
    from phasecode.jobs.convert import convert_job
    from phasecode.jobs.evaluate import evaluate_job

    convert_job(DEFAULT_MODEL, FitSettings(), SamplingSettings(), args.out, progress=not args.quiet)
    report = evaluate_job(args.out, ["wikitext2"], [], 512, args.limit, progress=not args.quiet)
    if args.json:
        write_json_atomic(args.json, report)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """The grid of conversions; exit 1 if any cell failed (the others are still written)."""
    from phasecode.comparison.options import settings_from_args
    from phasecode.jobs.compare import compare_job

    summary = compare_job(settings_from_args(args), args.out, progress=not args.quiet)
    if summary["failed"]:
        first = next(iter(summary["failed"].values()))
        count = f"{len(summary['failed'])} of {summary['cells']}"
        print(f"phasecode: {count} cells failed (first: {first})", file=sys.stderr)
        return 1
    return 0


COMMANDS = {
    "neurons": run_neurons,
    "convert": run_convert,
    "eval": run_eval,
    "run": run_main_job,
    "compare": run_compare,
    **SPIKING_COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return COMMANDS[args.command](args)
    except PhasecodeError as err:
        print(f"phasecode: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phasecode: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
