"""`phasecode eval DIR`: perplexity and zero-shot accuracy of the ANN and the spiking model."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.cli import options
from phasecode.cli.report import output_dir, report_with_evaluation
from phasecode.errors import PhasecodeError
from phasecode.inference.nll import EVAL_BATCH_SIZE
from phasecode.outputs import check_output_file, write_json_or_print

NAME = "eval"
HELP = "perplexity and zero-shot accuracy of the ANN and the spiking model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path)
    options.add_base_model(parser)
    parser.add_argument(
        "--ppl",
        default="wikitext2",
        help='comma list of wikitext2, wikitext2-valid, c4 ("" for none)',
    )
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
    parser.add_argument(
        "--batch-size", type=int, default=EVAL_BATCH_SIZE, help="windows per forward pass"
    )
    parser.add_argument(
        "--task-batch-size", type=int, default=16, help="task requests per forward pass"
    )
    parser.add_argument("--json", type=Path, help="write the evaluation as JSON")
    parser.add_argument(
        "--report", action="store_true", help="also write the report (DIR/report, with figures)"
    )
    options.add_placement(parser, dtype_default=None)


def run(args: argparse.Namespace) -> int:
    from phasecode.jobs.evaluate import evaluate_job

    options.check_base_model(args)

    options.positive(args, "batch_size", "task_batch_size", "limit")
    if args.seq_len < 2:
        raise PhasecodeError(f"--seq-len must be >= 2, got {args.seq_len}")
    if args.json is not None:
        check_output_file(args.json)
    if args.report:
        report_dir = output_dir(args.artifact, None)
    report = evaluate_job(
        args.artifact,
        [c for c in args.ppl.split(",") if c],
        args.text,
        args.seq_len,
        args.limit,
        progress=not args.quiet,
        batch_size=args.batch_size,
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
        task_batch_size=args.task_batch_size,
        placement=options.placement(args),
        base_model=args.base_model,
    )
    if args.json:
        write_json_or_print(args.json, report)
    if args.report:
        report_with_evaluation(args.artifact, report, report_dir)
    return 0
