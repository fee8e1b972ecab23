"""`phasecode neurons`: fit a neuron per linear-input site and score it (no conversion)."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.cli import options
from phasecode.errors import PhasecodeError
from phasecode.outputs import check_artifact_dir, check_output_file, write_json_or_print

HELP = "fit a neuron per activation site and score it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_conversion(parser)
    parser.add_argument("--no-rotate", action="store_true", help="no Hadamard before down_proj")
    parser.add_argument("--no-prefix", action="store_true", help="no BOS prefix token")
    parser.add_argument("--out", type=Path, help="save the neurons as an artifact directory")
    parser.add_argument("--force", action="store_true", help="overwrite an artifact in --out")
    parser.add_argument("--json", type=Path, help="write the per-site report as JSON")


def run(args: argparse.Namespace) -> int:
    from phasecode.jobs.neurons import neurons_job

    fit = options.fit_settings(args)
    if fit.objective != "mse":
        raise PhasecodeError(
            f"--objective {fit.objective} weighs errors by the model's loss, which `neurons` "
            "does not run; use `phasecode convert`"
        )
    if fit.probs_bias_auto:
        raise PhasecodeError(
            "--probs-bias auto measures the coded model's loss, which `neurons` does not run; "
            "give a number or use `phasecode convert`"
        )
    sampling = options.sampling_settings(args, prefix=not args.no_prefix)
    where = options.placement(args)
    options.check_model(args, where)
    if args.out is not None:
        check_artifact_dir(args.out, "neurons", args.force)
    if args.json is not None:
        check_output_file(args.json)
    report = neurons_job(
        args.model,
        fit,
        sampling,
        out=args.out,
        progress=not args.quiet,
        weight_bits=args.weight_bits,
        placement=where,
    )
    if args.json:
        write_json_or_print(args.json, report)
    return 0
