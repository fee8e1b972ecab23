"""`phasecode simulate DIR`: run a converted model as spikes; --check proves the fast path."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.cli import options
from phasecode.outputs import check_output_file, write_json_or_print

HELP = "run a converted model as spikes; --check the fast path"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path)
    options.add_base_model(parser)
    parser.add_argument("--check", action="store_true", help="compare with the fast path")
    parser.add_argument("--tokens", type=int, default=64, help="WikiText-2 test tokens")
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="float64 (default) gives an exact check; in float32 the spiking network is "
        "chaotic under rounding (the check then measures that floor)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N"
    )
    parser.add_argument("--mask", type=int, default=0, help="spike-masking strength")
    parser.add_argument("--text", help="corpus name or text file (default: WikiText-2 test)")
    parser.add_argument("--json", type=Path, help="write the report as JSON")


def run(args: argparse.Namespace) -> int:
    from phasecode.jobs.simulate import simulate_job
    from phasecode.models.devices import resolve_device

    options.check_base_model(args)

    options.positive(args, "tokens")
    device = resolve_device(args.device)
    if args.json is not None:
        check_output_file(args.json)
    report = simulate_job(
        args.artifact,
        args.tokens,
        args.check,
        args.dtype == "float64",
        args.mask,
        args.text,
        device=device,
        base_model=args.base_model,
    )
    if args.json:
        write_json_or_print(args.json, report)
    return 1 if args.check and not report["check"]["passed"] else 0
