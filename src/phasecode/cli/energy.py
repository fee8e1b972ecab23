"""`phasecode energy DIR`: spikes, operations and energy per layer (Eq. 18/59/60)."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.cli import options
from phasecode.outputs import check_output_file, write_json_or_print
from phasecode.simulation.energy import PRESETS

HELP = "spikes, operations and energy per layer (Eq. 18/59/60)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path)
    options.add_base_model(parser)
    parser.add_argument("--tokens", type=int, default=512, help="WikiText-2 test tokens")
    parser.add_argument(
        "--mask",
        type=int,
        default=3,
        help="masking strength: drop spikes more than T-1-S "
        "steps after a neuron's first (0 = none)",
    )
    parser.add_argument(
        "--costs", default="45nm-fp32", help=f"{' | '.join(PRESETS)} or a JSON file of costs"
    )
    parser.add_argument("--windows", type=int, default=8, help="WikiText-2 windows for PPL")
    parser.add_argument("--seq-len", type=int, default=512, help="PPL window length")
    parser.add_argument("--text", default="wikitext2", help="corpus name or text file")
    parser.add_argument("--json", type=Path, help="write the report as JSON")
    options.add_placement(parser, dtype_default=None)


def run(args: argparse.Namespace) -> int:
    from phasecode.jobs.energy import energy_job
    from phasecode.simulation.energy import load_costs

    options.check_base_model(args)

    options.positive(args, "tokens", "windows")
    load_costs(args.costs)  # a bad cost file is refused before the model loads
    if args.json is not None:
        check_output_file(args.json)
    report = energy_job(
        args.artifact,
        args.tokens,
        args.mask,
        args.costs,
        args.windows,
        args.seq_len,
        progress=not args.quiet,
        text=args.text,
        placement=options.placement(args),
        base_model=args.base_model,
    )
    if args.json:
        write_json_or_print(args.json, report)
    return 0
