"""Zero-shot accuracy (ARC-Easy/Challenge, PIQA, WinoGrande) of the prepared ANN and the SNN.

The scoring is lm-evaluation-harness's own: the task configs in ``configs/`` are lm-eval task
YAMLs (``phasecode_arc_easy``, ...) that read the staged original release files (``data.py``)
and build the prompts of lm-eval's built-in tasks (``prompts.py``); lm-eval computes acc and
acc_norm. Both columns run after the artifact's prefix, as ``phasecode eval`` does for
perplexity: ANN = the prepared model without neurons (``spiking.analog()``), SNN = the fast
equivalent path (``spiking.coded()``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from phasecode.errors import PhasecodeError
from phasecode.evaluation.tasks.data import SOURCES, TASK_CONFIGS

if TYPE_CHECKING:
    from phasecode.conversion.convert import SpikingModel

TASKS: tuple[str, ...] = ("arc_easy", "arc_challenge", "piqa", "winogrande")
# what the paper reports per task (lm-eval computes both acc and acc_norm where it can)
METRICS: dict[str, str] = {
    "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm",
    "piqa": "acc_norm",
    "winogrande": "acc",
}
LM_EVAL_PREFIX = "phasecode_"  # registered task names; lm-eval's built-in names stay untouched


def lm_eval_name(task: str) -> str:
    return LM_EVAL_PREFIX + task


def check_tasks(tasks: list[str], limit: int | None = None) -> list[str]:
    """The task names without repeats, each with readable data, or a PhasecodeError.

    Reading every data file up front means a missing or malformed file is reported before
    any model runs.
    """
    names = list(dict.fromkeys(tasks))
    if not names:
        raise PhasecodeError(f"no task given; choose from {', '.join(TASKS)}")
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise PhasecodeError(
            f"unknown task {', '.join(map(repr, unknown))}; choose from {', '.join(TASKS)}"
        )
    if limit is not None and limit < 1:
        raise PhasecodeError(f"limit must be >= 1, got {limit}")
    for name in names:
        SOURCES[name].read()
    return names


def load_docs(task: str) -> list[dict[str, Any]]:
    """A task's documents in the schema of the HF dataset lm-eval's built-in task uses."""
    return SOURCES[check_tasks([task])[0]].read()


def score_tasks(
    spiking: SpikingModel,
    tasks: list[str],
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, dict]:
    """Accuracy in percent of the prepared ANN and of the SNN on the first `limit` examples.

    Returns {task: {"ann", "snn", "n", "metric", "ann_stderr", "snn_stderr", "ann_source"}};
    `metric` is the one the paper reports (acc_norm for ARC and PIQA, acc for WinoGrande); the
    standard errors (of the mean over examples) are None for a single example; `ann_source`
    says whether the ANN's run was measured or read back ("cache", ``ann_scores``).
    """
    from phasecode.evaluation.harness import PhasecodeLM
    from phasecode.evaluation.tasks.ann_scores import ann_task_metrics

    names = check_tasks(tasks, limit)

    def measured(mode: str) -> dict[str, dict]:
        lm = PhasecodeLM(
            spiking=spiking, analog=mode == "ann", batch_size=batch_size, progress=progress
        )
        return task_metrics(run_lm_eval(lm, names, limit, progress), names)

    ann, source = ann_task_metrics(spiking, names, limit, batch_size, lambda: measured("ann"))
    snn = measured("snn")
    return {
        name: {
            "ann": ann[name]["value"],
            "snn": snn[name]["value"],
            "n": snn[name]["n"],
            "metric": METRICS[name],
            "ann_stderr": ann[name]["stderr"],
            "snn_stderr": snn[name]["stderr"],
            "ann_source": source,
        }
        for name in names
    }


def task_metrics(results: dict, names: list[str]) -> dict[str, dict]:
    """Per task, the reported metric in percent, its standard error and the example count,
    out of lm-eval's raw results."""
    metrics = {}
    for name in names:
        metric, key = METRICS[name], lm_eval_name(name)
        row = results["results"][key]
        metrics[name] = {
            "value": 100 * row[f"{metric},none"],
            "stderr": _percent(row.get(f"{metric}_stderr,none")),
            "n": results["n-samples"][key]["effective"],
        }
    return metrics


def _percent(stderr: Any) -> float | None:
    """lm-eval's standard error in percent; None where it has none (it says "N/A" for n = 1)."""
    return 100 * stderr if isinstance(stderr, (int, float)) else None


def run_lm_eval(lm: Any, tasks: list[str], limit: int | None, progress: bool = True) -> dict:
    """lm-eval's ``evaluate`` on phasecode's offline task configs (zero-shot): its raw results."""
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    with quiet_lm_eval(progress):
        manager = TaskManager(include_path=str(TASK_CONFIGS), include_defaults=False)
        loaded = manager.load([lm_eval_name(task) for task in tasks])
        return evaluate(lm=lm, task_dict=loaded, limit=limit, log_samples=False)


@contextlib.contextmanager
def quiet_lm_eval(progress: bool) -> Iterator[None]:
    """lm-eval's info/warning logs off; its per-task 'building contexts' bar off unless
    progress (it has no switch, so the module's tqdm is swapped for the duration)."""
    import lm_eval.api.task as task_module

    logger = logging.getLogger("lm_eval")
    level, bar = logger.level, task_module.tqdm
    logger.setLevel(logging.ERROR)
    if not progress:
        task_module.tqdm = _silent_tqdm
    try:
        yield
    finally:
        logger.setLevel(level)
        task_module.tqdm = bar


def _silent_tqdm(iterable=None, *args: Any, **kwargs: Any):
    return tqdm(iterable, *args, **{**kwargs, "disable": True})
