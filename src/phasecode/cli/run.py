"""`phasecode run`: the README's main job — convert a model (the default one), then evaluate
it."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.artifacts import SPIKING_MODEL_KIND
from phasecode.cli import options
from phasecode.cli.report import output_dir, report_with_evaluation
from phasecode.outputs import (
    check_artifact_dir,
    check_output_file,
    exclusive_output,
    write_json_or_print,
)

HELP = "the main job: convert a model (the default one) and evaluate it"
DEFAULT_OUT = Path("out/smollm2-135m-T8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, help=f"default: {DEFAULT_OUT}, or out/<model name>-T8 for --model"
    )
    parser.add_argument("--limit", type=int, default=8, help="WikiText-2 windows to evaluate")
    parser.add_argument("--json", type=Path, help="write the evaluation as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite a converted model in --out")
    options.add_model(parser)


def default_out(model: str) -> Path:
    """Where a run of ``model`` saves its spiking model unless told: the default model's
    artifact is replaced by a rerun, another model's is kept unless --force."""
    from phasecode.models.resolve import DEFAULT_MODEL

    if model == DEFAULT_MODEL:
        return DEFAULT_OUT
    name = Path(model.rstrip("/")).name
    return Path("out") / f"{name.removesuffix('.gguf')}-T8"


def run(args: argparse.Namespace) -> int:
    """Convert the model (SmolLM2-135M unless --model) at T=8 with 2 grains, then evaluate
    WikiText-2 on a subset. An existing artifact in the default model's default --out is
    replaced: rerunning the main job is expected.

    One model load serves both: the plain ANN is scored first, then converted in place and
    evaluated as the saved artifact would be (``eval`` on it gives the same numbers)."""
    from phasecode.jobs.run import run_job

    options.positive(args, "limit")
    where = options.placement(args)
    options.check_model(args, where)
    out = args.out or default_out(args.model)
    check_artifact_dir(
        out, SPIKING_MODEL_KIND, args.force or args.out is None and out == DEFAULT_OUT
    )
    if args.json is not None:
        check_output_file(args.json)
    report_dir = output_dir(out, None)
    with exclusive_output(out):
        report = run_job(args.model, out, args.limit, where, progress=not args.quiet)
    if args.json:
        write_json_or_print(args.json, report)
    report_with_evaluation(out, report, report_dir)
    return 0
