"""`phasecode generate DIR --prompt …`: greedy decoding with a KV cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.cli import options

HELP = "greedy text generation with a KV cache"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path)
    options.add_base_model(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--spiking", action="store_true", help="run the spike-level simulator")
    parser.add_argument("--float64", action="store_true", help="run in float64")
    parser.add_argument("--mask", type=int, default=0, help="spike-masking strength")
    parser.add_argument(
        "--analog", action="store_true", help="also print the (prepared) ANN's completion"
    )
    options.add_placement(parser, dtype_default=None)


def run(args: argparse.Namespace) -> int:
    from phasecode.jobs.generate import generate_job

    options.check_base_model(args)

    generate_job(
        args.artifact,
        args.prompt,
        args.max_new_tokens,
        args.spiking,
        args.float64,
        args.mask,
        placement=options.placement(args),
        analog=args.analog,
        base_model=args.base_model,
    )
    return 0
