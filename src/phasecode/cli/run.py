"""`phasecode run`: the README's main job — convert a model (the default one), then evaluate
it."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.cli import options
from phasecode.cli.report import output_dir, report_with_evaluation
from phasecode.outputs import check_artifact_dir, check_output_file, write_json_or_print

HELP = "the main job: convert a model (the default one) and evaluate it"
DEFAULT_OUT = Path("out/smollm2-135m-T8")
SEQ_LEN = 512  # tokens per evaluation window


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
    from phasecode.models.loading import DEFAULT_MODEL

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
    from phasecode.evaluation.perplexity import load_corpus, token_windows
    from phasecode.inference.nll import EVAL_BATCH_SIZE, check_seq_len
    from phasecode.inference.prefix_choice import MAX_PREFIX_TOKENS
    from phasecode.inference.score_cache import PLAIN
    from phasecode.jobs.convert import convert_loaded
    from phasecode.jobs.evaluate import evaluate_spiking, format_evaluation, score_windows
    from phasecode.models.placement import load_placed
    from phasecode.settings import FitSettings, SamplingSettings

    options.positive(args, "limit")
    where = options.placement(args)
    options.check_model(args, where)
    out = args.out or default_out(args.model)
    check_artifact_dir(out, "spiking-model", args.force or args.out is None and out == DEFAULT_OUT)
    if args.json is not None:
        check_output_file(args.json)
    report_dir = output_dir(out, None)
    progress = not args.quiet
    model, tokenizer = load_placed(args.model, where)
    check_seq_len(model, SEQ_LEN, MAX_PREFIX_TOKENS)
    windows = {"wikitext2": token_windows(tokenizer, load_corpus("wikitext2"), SEQ_LEN, args.limit)}
    ann = score_windows(model, windows, None, EVAL_BATCH_SIZE, progress, PLAIN)
    spiking = convert_loaded(
        model,
        tokenizer,
        args.model,
        FitSettings(),
        SamplingSettings(),
        out,
        progress=progress,
    )
    report = evaluate_spiking(spiking, windows, ann, progress=progress)
    report["artifact"] = str(out)
    print(format_evaluation(report))
    if args.json:
        write_json_or_print(args.json, report)
    report_with_evaluation(out, report, report_dir)
    return 0
