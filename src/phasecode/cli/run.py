"""`phasecode run`: the README's main job — convert the default model, then evaluate it."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.cli import options
from phasecode.cli.report import output_dir, report_with_evaluation
from phasecode.outputs import check_artifact_dir, check_output_file, write_json_or_print

HELP = "the main job: convert the default model and evaluate it"
DEFAULT_OUT = Path("out/smollm2-135m-T8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--limit", type=int, default=8, help="WikiText-2 windows to evaluate")
    parser.add_argument("--json", type=Path, help="write the evaluation as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite a converted model in --out")
    options.add_placement(parser)


def run(args: argparse.Namespace) -> int:
    """Convert SmolLM2-135M at T=8 with 2 grains, then evaluate WikiText-2 on a subset. An
    existing artifact in the default --out is replaced: rerunning the main job is expected."""
    from phasecode.jobs.convert import convert_job
    from phasecode.jobs.evaluate import evaluate_job
    from phasecode.models.loading import DEFAULT_MODEL
    from phasecode.settings import FitSettings, SamplingSettings

    options.positive(args, "limit")
    where = options.placement(args)
    check_artifact_dir(args.out, "spiking-model", args.force or args.out == DEFAULT_OUT)
    if args.json is not None:
        check_output_file(args.json)
    report_dir = output_dir(args.out, None)
    progress = not args.quiet
    convert_job(
        DEFAULT_MODEL,
        FitSettings(),
        SamplingSettings(),
        args.out,
        progress=progress,
        placement=where,
    )
    report = evaluate_job(
        args.out, ["wikitext2"], [], 512, args.limit, progress=progress, placement=where
    )
    if args.json:
        write_json_or_print(args.json, report)
    report_with_evaluation(args.out, report, report_dir)
    return 0
