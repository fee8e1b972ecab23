"""`phasecode compare`: the paper's comparison grid, comma lists for every axis.

Each axis takes several values, so one command is one paper table: ``--grains 1,2,3,T`` is
Table 5, ``--modes alternating,joint`` Table 6, ``--modes alternating,coupled`` Table 7,
``--weight-bits 8,4`` Table 8.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from phasecode.cli import options
from phasecode.errors import PhasecodeError
from phasecode.inference.nll import EVAL_BATCH_SIZE
from phasecode.models.resolve import DEFAULT_MODEL
from phasecode.outputs import check_output_file, check_owned_dir, exclusive_output
from phasecode.settings import TrainConfig

COMPARE_FILES = ("results.json", "table.md", "ppl_vs_T.png")
HELP = "convert with every method / T / setting and tabulate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="hub id, local path, .gguf or smollm2-135m"
    )
    options.add_placement(parser)
    parser.add_argument("--timesteps", "-T", default="6,8,10", help="comma list of T")
    parser.add_argument(
        "--methods",
        default="mgpc,las,spikedattention,ttfs,rate",
        help="comma list of mgpc,las,spikedattention,ttfs,rate,phase (ttfs runs at T=128)",
    )
    parser.add_argument("--grains", default="2,3", help="mgpc grains, comma list; T: grains = T")
    parser.add_argument(
        "--modes", default="alternating", help="mgpc training modes: alternating,joint,coupled"
    )
    parser.add_argument("--weight-bits", default="fp", help="comma list of fp (full), 8, 4")
    parser.add_argument("--tasks", default="", help="zero-shot tasks, comma list or all")
    parser.add_argument("--task-limit", type=int, help="examples per zero-shot task")
    parser.add_argument(
        "--task-batch-size", type=int, default=16, help="task requests per forward pass"
    )
    parser.add_argument("--limit", type=int, default=8, help="perplexity windows (the first N)")
    parser.add_argument(
        "--corpus", default="wikitext2", help="wikitext2, wikitext2-valid, c4 or a text file"
    )
    parser.add_argument("--seq-len", type=int, default=512, help="perplexity window length")
    parser.add_argument(
        "--batch-size", type=int, default=EVAL_BATCH_SIZE, help="windows per forward pass"
    )
    options.add_sampling(parser, seq_len_option="--calib-seq-len")
    parser.add_argument("--rounds", type=int, default=TrainConfig.rounds, help="N of Alg. 1")
    parser.add_argument("--no-rotate", action="store_true", help="no Hadamard rotation")
    parser.add_argument("--no-prefix", action="store_true", help="no prefix (else: measured)")
    parser.add_argument("--out", type=Path, required=True, help="results directory")


def settings_from_args(args: argparse.Namespace):
    """The validated grid; any bad value is a one-line PhasecodeError."""
    from phasecode.comparison.grid import build_cells
    from phasecode.comparison.settings import CompareSettings

    options.positive(
        args, "limit", "seq_len", "batch_size", "task_batch_size", "rounds", "task_limit"
    )
    timesteps = _parse(args.timesteps, "--timesteps", int)
    grains = _parse(args.grains, "--grains", lambda v: "T" if v.upper() == "T" else int(v))
    bits = _parse(args.weight_bits, "--weight-bits", lambda v: None if v == "fp" else int(v))
    tasks = _parse(args.tasks, "--tasks", str) if args.tasks else []
    cells = build_cells(
        _parse(args.methods, "--methods", str.lower),
        timesteps,
        grains,
        _parse(args.modes, "--modes", str),
        bits,
        rotate=not args.no_rotate,
        prefix=not args.no_prefix,
    )
    return CompareSettings(
        model=args.model,
        cells=tuple(cells),
        timesteps=tuple(timesteps),
        sampling=options.sampling_settings(args),
        train=TrainConfig(rounds=args.rounds),
        corpus=args.corpus,
        seq_len=args.seq_len,
        limit=args.limit,
        tasks=tuple(tasks),
        task_limit=args.task_limit,
        batch_size=args.batch_size,
        task_batch_size=args.task_batch_size,
        placement=options.placement(args),
    )


def _parse(text: str, option: str, convert: Callable[[str], object]) -> list:
    """A comma list, each item converted; empty lists and unconvertible items are errors."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise PhasecodeError(f"{option} needs at least one value")
    try:
        return [convert(item) for item in items]
    except ValueError:
        raise PhasecodeError(f"{option}: cannot read {text!r} as a comma list") from None


def run(args: argparse.Namespace) -> int:
    """The grid of conversions; exit 1 if any cell failed (the others are still written)."""
    from phasecode.jobs.compare import compare_job

    settings = settings_from_args(args)
    options.check_model(args, settings.placement)
    resuming = (args.out / "results.json").is_file()  # a store phasecode wrote: resumed
    check_owned_dir(args.out, COMPARE_FILES, "comparison", ours=resuming)
    check_output_file(args.out / "results.json")
    with exclusive_output(args.out):
        summary = compare_job(settings, args.out, progress=not args.quiet)
    if summary["failed"]:
        first = next(iter(summary["failed"].values()))
        count = f"{len(summary['failed'])} of {summary['cells']}"
        print(f"phasecode: {count} cells failed (first: {first})", file=sys.stderr)
        return 1
    return 0
