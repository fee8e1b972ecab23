"""The prepared ANN's zero-shot accuracy, remembered.

Every ``eval --tasks`` of an artifact, and every cell of a ``compare`` grid with tasks, runs
lm-eval twice: on the SNN and on the prepared ANN (rotated, after the prefix). The ANN's run is
as long as the SNN's and the same for every artifact that shares the preparation, so it is
read back when it was measured before. The key holds the weights' fingerprint (as rotated),
the preparation (``SpikingModel.analog_identity``), the prefix, the tasks, the limit, the batch
size, the task data files and configs, and the provenance record (the code of evaluation,
inference, models and conversion; library versions; the device).

``PHASECODE_SCORE_CACHE=0`` measures every time (the switch of ``inference.score_cache``).
Entries are JSON under $PHASECODE_CACHE/task-scores/ (``cache.measurements``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from phasecode.cache.measurements import MeasurementCache, model_device, model_facts
from phasecode.evaluation.tasks.data import SOURCES, TASK_CONFIGS

if TYPE_CHECKING:
    from phasecode.conversion.convert import SpikingModel

TASK_SCORES = MeasurementCache(
    "task-scores",
    "PHASECODE_SCORE_CACHE",
    format=2,
    purpose="the prepared ANN's zero-shot accuracy (eval --tasks, compare)",
    code=("evaluation", "inference", "models", "conversion"),
)
# per task: the reported metric's value, its standard error (None for one example) and n
Metrics = dict[str, dict]


def ann_task_metrics(
    spiking: SpikingModel,
    tasks: list[str],
    limit: int | None,
    batch_size: int,
    measure: Callable[[], Metrics],
) -> tuple[Metrics, str]:
    """``measure()``'s metrics of the prepared ANN, or their earlier value for the same
    model, preparation, tasks and data; with "measured" or "cache"."""
    return TASK_SCORES.remembered(
        lambda: task_inputs(spiking, tasks, limit, batch_size),
        measure,
        lambda metrics: {"metrics": metrics},
        lambda stored: stored["metrics"] if _readable(stored.get("metrics"), tasks) else None,
        model_device(spiking.model),
    )


def task_inputs(
    spiking: SpikingModel, tasks: list[str], limit: int | None, batch_size: int
) -> dict:
    """What the accuracy depends on besides the provenance (module docstring)."""
    files = hashlib.sha256()
    for task in tasks:
        for path in [*SOURCES[task].paths(), TASK_CONFIGS / f"phasecode_{task}.yaml"]:
            files.update(path.name.encode() + path.read_bytes())
    prefix = spiking.prefix
    return model_facts(spiking.model) | {
        "forward": spiking.analog_identity(),
        "prefix": None if prefix is None else list(prefix.token_ids),
        "tasks": tasks,
        "limit": limit,
        "batch_size": batch_size,
        "files": files.hexdigest(),
    }


def _readable(metrics: object, tasks: list[str]) -> bool:
    """Whether a stored entry has every task's value, standard error and n."""
    return isinstance(metrics, dict) and all(
        isinstance(metrics.get(task), dict)
        and isinstance(metrics[task].get("value"), (int, float))
        and isinstance(metrics[task].get("n"), int)
        and "stderr" in metrics[task]
        for task in tasks
    )
