"""`phasecode convert`: a base model → a spiking-model artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.cli import options
from phasecode.outputs import check_artifact_dir

HELP = "convert a model into a spiking model artifact"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_conversion(parser)
    parser.add_argument("--no-rotate", action="store_true", help="no Hadamard rotations")
    options.add_prefix(parser)
    parser.add_argument("--no-lm-head", action="store_true", help="keep the lm_head input analog")
    parser.add_argument(
        "--balance", action="store_true", help="balance the SiLU·up operands per channel"
    )
    parser.add_argument("--out", type=Path, required=True, help="artifact directory")
    parser.add_argument("--force", action="store_true", help="overwrite an artifact in --out")


def run(args: argparse.Namespace) -> int:
    from phasecode.jobs.convert import convert_job

    fit = options.fit_settings(args)
    sampling = options.sampling_settings(args)
    prefix = options.prefix_request(args)
    where = options.placement(args)
    options.check_model(args, where)
    check_artifact_dir(args.out, "spiking-model", args.force)
    convert_job(
        args.model,
        fit,
        sampling,
        args.out,
        rotate=not args.no_rotate,
        prefix=prefix,
        lm_head=not args.no_lm_head,
        progress=not args.quiet,
        balance=args.balance,
        weight_bits=args.weight_bits,
        placement=where,
    )
    return 0
