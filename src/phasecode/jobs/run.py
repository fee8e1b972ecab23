"""`phasecode run`: the README's main job — convert a model (the default one) at T=8 with 2
grains, evaluate WikiText-2 on a subset, and draw the report."""

from __future__ import annotations

from pathlib import Path

from phasecode.artifacts import artifact_id
from phasecode.conversion.config import ConversionConfig
from phasecode.evaluation.perplexity import load_corpus, token_windows
from phasecode.inference.nll import EVAL_BATCH_SIZE, check_seq_len
from phasecode.inference.prefix_choice import MAX_PREFIX_TOKENS
from phasecode.inference.score_cache import PLAIN
from phasecode.jobs.convert import convert_loaded, load_placed_model
from phasecode.jobs.evaluate import evaluate_spiking, format_evaluation, score_windows
from phasecode.models.placement import Placement

SEQ_LEN = 512  # tokens per evaluation window


def run_job(
    model_name: str, out: Path, limit: int, placement: Placement, progress: bool = True
) -> dict:
    """One model load serves both: the plain ANN is scored first, then converted in place and
    evaluated as the saved artifact would be (``eval`` on it gives the same numbers)."""
    model, tokenizer = load_placed_model(model_name, placement)
    check_seq_len(model, SEQ_LEN, MAX_PREFIX_TOKENS)
    windows = {"wikitext2": token_windows(tokenizer, load_corpus("wikitext2"), SEQ_LEN, limit)}
    ann = score_windows(model, windows, None, EVAL_BATCH_SIZE, progress, PLAIN)
    spiking = convert_loaded(model, tokenizer, ConversionConfig(), out, progress=progress)
    report = evaluate_spiking(spiking.spiking, windows, ann, progress=progress)
    report["artifact"] = str(out)
    report["artifact_id"] = artifact_id(out)
    print(format_evaluation(report))
    return report
