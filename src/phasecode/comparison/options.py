"""`phasecode compare` options: comma lists for every grid axis, checked before any model loads.

Each axis takes several values, so one command is one paper table: ``--grains 1,2,3,T`` is
Table 5, ``--modes alternating,joint`` Table 6, ``--modes alternating,coupled`` Table 7,
``--weight-bits 8,4`` Table 8.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from phasecode.errors import PhasecodeError
from phasecode.fitting import SamplingSettings
from phasecode.models.loading import DEFAULT_MODEL
from phasecode.training.alternating import TrainConfig

if TYPE_CHECKING:  # the grid pulls in transformers; the CLI parser should start fast
    from phasecode.comparison.grid import Cell


@dataclass(frozen=True)
class CompareSettings:
    """The grid and everything its cells share."""

    model: str
    cells: tuple[Cell, ...]
    timesteps: tuple[int, ...]  # the grid's T axis (the plot's x axis)
    sampling: SamplingSettings
    train: TrainConfig
    corpus: str = "wikitext2"
    seq_len: int = 512
    limit: int = 8
    tasks: tuple[str, ...] = ()  # may be ("all",), resolved by the job
    task_limit: int | None = None
    batch_size: int = 4
    task_batch_size: int = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, local path or smollm2-135m")
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
    parser.add_argument("--corpus", default="wikitext2", help="wikitext2, c4 or a text file")
    parser.add_argument("--seq-len", type=int, default=512, help="perplexity window length")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--samples", type=int, default=10_000, help="training samples per site")
    parser.add_argument("--calibration", type=Path, help="calibration text (.jsonl or .txt)")
    parser.add_argument("--sequences", type=int, default=16, help="calibration sequences")
    parser.add_argument("--calib-seq-len", type=int, default=256, help="calibration length")
    parser.add_argument("--rounds", type=int, default=TrainConfig.rounds, help="N of Alg. 1")
    parser.add_argument("--no-rotate", action="store_true", help="no Hadamard rotation")
    parser.add_argument("--no-prefix", action="store_true", help="no prefixed outlier tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="results directory")


def settings_from_args(args: argparse.Namespace) -> CompareSettings:
    """The validated grid; any bad value is a one-line PhasecodeError."""
    from phasecode.comparison.grid import build_cells

    positive = ("limit", "seq_len", "batch_size", "task_batch_size", "sequences", "calib_seq_len")
    for name in (*positive, "rounds"):
        if getattr(args, name) < 1:
            raise PhasecodeError(f"--{name.replace('_', '-')} must be >= 1")
    if args.samples < 16:
        raise PhasecodeError(f"--samples must be at least 16, got {args.samples}")
    if args.task_limit is not None and args.task_limit < 1:
        raise PhasecodeError("--task-limit must be >= 1")
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
    defaults = SamplingSettings()
    sampling = SamplingSettings(
        samples=args.samples,
        calibration=args.calibration or defaults.calibration,
        sequences=args.sequences,
        seq_len=args.calib_seq_len,
        seed=args.seed,
    )
    return CompareSettings(
        model=args.model,
        cells=tuple(cells),
        timesteps=tuple(timesteps),
        sampling=sampling,
        train=TrainConfig(rounds=args.rounds),
        corpus=args.corpus,
        seq_len=args.seq_len,
        limit=args.limit,
        tasks=tuple(tasks),
        task_limit=args.task_limit,
        batch_size=args.batch_size,
        task_batch_size=args.task_batch_size,
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
