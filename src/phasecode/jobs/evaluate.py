"""`phasecode eval`: perplexity of the ANN and of the spiking model on the same windows, and
zero-shot accuracy of the prepared ANN and the spiking model on the same task examples."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from torch import Tensor

from phasecode.artifacts import artifact_id
from phasecode.conversion.convert import SpikingModel
from phasecode.conversion.store import load_base_model, load_spiking, read_spiking_metadata
from phasecode.errors import PhasecodeError
from phasecode.evaluation.perplexity import CORPORA, load_corpus, token_windows
from phasecode.evaluation.tasks import check_tasks, score_tasks
from phasecode.inference.nll import EVAL_BATCH_SIZE, WindowNLL, check_seq_len, perplexity
from phasecode.inference.prefix import Prefix
from phasecode.inference.score_cache import PLAIN, perplexity_cached
from phasecode.models.placement import CPU, Placement


def evaluate_job(
    artifact: Path,
    corpora: list[str],
    texts: list[Path],
    seq_len: int = 512,
    limit: int | None = None,
    progress: bool = True,
    batch_size: int = EVAL_BATCH_SIZE,
    tasks: list[str] | None = None,
    task_batch_size: int = 16,
    placement: Placement = CPU,
    base_model: str | None = None,
) -> dict:
    """ANN on its own windows (the standard protocol), then the spiking model on the same
    windows after its prefix; also the prepared ANN with that prefix, so the prefix's own
    effect is visible next to the conversion's. `tasks` adds zero-shot accuracy of the
    prepared ANN and the SNN (both after the prefix) on the first `limit` examples of each."""
    for name in corpora:
        if name not in CORPORA:
            raise PhasecodeError(f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}")
    tasks = check_tasks(tasks, limit) if tasks else []
    if not corpora and not texts and not tasks:
        raise PhasecodeError("nothing to evaluate: give --ppl corpora, --text files or --tasks")
    metadata = read_spiking_metadata(artifact)
    sources = {name: load_corpus(name) for name in corpora}
    sources.update({str(path): load_corpus(str(path)) for path in texts})
    model, tokenizer = load_base_model(metadata, placement.device, placement.dtype, base_model)
    if sources:
        check_seq_len(model, seq_len, len(metadata["spec"]["prefix_tokens"]))
    windows = {k: token_windows(tokenizer, text, seq_len, limit) for k, text in sources.items()}
    ann = score_windows(model, windows, None, batch_size, progress, PLAIN)
    spiking = load_spiking(artifact, model, tokenizer)
    report = evaluate_spiking(
        spiking, windows, ann, batch_size, progress, tasks, limit, task_batch_size
    )
    report["artifact"] = str(artifact)
    report["artifact_id"] = artifact_id(artifact)
    report["spec"] = metadata["spec"]
    print(format_evaluation(report))
    return report


def score_windows(
    model,
    windows: dict[str, Tensor],
    prefix: Prefix | None,
    batch_size: int,
    progress: bool,
    ann: dict | None = None,
) -> dict[str, WindowNLL]:
    """Perplexity of each corpus's windows under whatever surgery is installed. An ANN's
    scores (``ann``: what its forward computes besides the weights, see
    ``inference.score_cache``) are read back when they were measured before."""
    if ann is None:
        return {k: perplexity(model, w, prefix, batch_size, progress) for k, w in windows.items()}
    return {
        k: perplexity_cached(model, w, prefix, batch_size, progress, ann)
        for k, w in windows.items()
    }


def evaluate_spiking(
    spiking: SpikingModel,
    windows: dict[str, Tensor],
    ann: dict[str, WindowNLL],
    batch_size: int = EVAL_BATCH_SIZE,
    progress: bool = True,
    tasks: list[str] | None = None,
    limit: int | None = None,
    task_batch_size: int = 16,
) -> dict:
    """The prepared ANN after the prefix and the SNN on the windows the plain ANN scored as
    ``ann`` (``evaluate_job``'s report without the artifact's name); ``tasks`` as there."""
    with spiking.analog():
        analog = score_windows(
            spiking.model, windows, spiking.prefix, batch_size, progress, spiking.analog_identity()
        )
    with spiking.coded():
        snn = score_windows(spiking.model, windows, spiking.prefix, batch_size, progress)
    report = {"ppl": {}, "seconds": {"ann": 0.0, "snn": 0.0}}
    for k, w in windows.items():
        report["ppl"][k] = {
            "ann": ann[k].ppl,
            "snn": snn[k].ppl,
            "ratio": snn[k].ppl / ann[k].ppl,
            "ann_prefixed": analog[k].ppl,
            "ann_source": ann[k].source,
            "ann_prefixed_source": analog[k].source,
            "windows": len(w),
            "seq_len": w.shape[1],
        }
        warn_prefix_cost(k, ann[k].ppl, analog[k].ppl)
        report["seconds"]["ann"] += ann[k].seconds
        report["seconds"]["snn"] += snn[k].seconds
    if tasks:
        start = time.perf_counter()
        report["tasks"] = score_tasks(spiking, tasks, limit, task_batch_size, progress)
        report["tasks_average"] = {
            mode: sum(row[mode] for row in report["tasks"].values()) / len(tasks)
            for mode in ("ann", "snn")
        }
        report["seconds"]["tasks"] = time.perf_counter() - start
    report["spec"] = asdict(spiking.spec) | {"prefix_tokens": list(spiking.spec.prefix_tokens)}
    return report


PREFIX_WARNING = 0.01  # ANN + prefix this much worse than the ANN deserves a warning


def warn_prefix_cost(corpus: str, ann: float, prefixed: float) -> None:
    """The prefix must not change what the ANN predicts; say so when it does."""
    if prefixed > (1 + PREFIX_WARNING) * ann:
        print(
            f"phasecode: warning: on {corpus} the ANN with the artifact's prefix is "
            f"{prefixed / ann - 1:.1%} worse than the ANN ({prefixed:.3f} vs {ann:.3f}); "
            "convert again with another --prefix, or let convert choose it",
            file=sys.stderr,
        )


def _ppl(value: float, decimals: int = 3) -> str:
    """A perplexity (or ratio) that keeps its column: fixed point, scientific from 1e5 on."""
    return f"{value:.{decimals}f}" if abs(value) < 1e5 else f"{value:.3e}"


def format_evaluation(report: dict) -> str:
    spec = report["spec"]
    lines = [
        f"{spec['method']}  T={spec['timesteps']}  grains={spec['grains']}  "
        f"rotate={spec['rotate']}  prefix={list(spec['prefix_tokens'])}",
    ]
    s = report["seconds"]
    if report["ppl"]:
        lines.append(
            f"{'corpus':<12}{'windows':>8}{'ANN':>11}{'ANN+prefix':>12}{'SNN':>11}{'SNN/ANN':>10}"
        )
        for name, row in report["ppl"].items():
            ann, prefixed, snn = (_ppl(row[k]) for k in ("ann", "ann_prefixed", "snn"))
            lines.append(
                f"{name:<12}{row['windows']:>8} {ann:>10} {prefixed:>11} {snn:>10}"
                f" {_ppl(row['ratio'], 4):>9}"
            )
        remembered = any(row.get("ann_source") == "cache" for row in report["ppl"].values())
        lines.append(
            f"time: ANN {s['ann']:.1f} s"
            + (
                " (an earlier measurement: the ANN's scores came from the cache)"
                if remembered
                else ""
            )
            + f", SNN (fast path) {s['snn']:.1f} s"
        )
    if "tasks" in report:
        lines += format_tasks(report["tasks"], report["tasks_average"])
        remembered = any(row.get("ann_source") == "cache" for row in report["tasks"].values())
        lines.append(
            f"time: tasks (ANN+prefix and SNN) {s['tasks']:.1f} s"
            + (" (the ANN's accuracy came from the cache: only the SNN ran)" if remembered else "")
        )
    return "\n".join(lines)


def format_tasks(tasks: dict[str, dict], average: dict[str, float]) -> list[str]:
    """Accuracy table in percent; ANN is the prepared ANN after the prefix, like the SNN."""
    lines = [f"{'task':<14}{'n':>6}  {'metric':<9}{'ANN+prefix':>11}{'SNN':>8}{'SNN-ANN':>9}"]
    for name, row in tasks.items():
        lines.append(
            f"{name:<14}{row['n']:>6}  {row['metric']:<9}{row['ann']:>11.2f}{row['snn']:>8.2f}"
            f"{row['snn'] - row['ann']:>+9.2f}"
        )
    lines.append(
        f"{'average':<14}{'':>6}  {'':<9}{average['ann']:>11.2f}{average['snn']:>8.2f}"
        f"{average['snn'] - average['ann']:>+9.2f}"
    )
    return lines
