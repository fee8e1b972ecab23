"""One grid cell from its group's calibration to its record: convert, perplexity on the
shared windows (and the prepared ANN's, once per group), zero-shot accuracy if asked."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

import torch

from phasecode.comparison.grid import Cell, convert_cell
from phasecode.comparison.settings import CompareSettings
from phasecode.conversion.convert import Calibrated, SpikingModel
from phasecode.errors import PhasecodeError
from phasecode.inference.nll import WindowNLL, perplexity


def task_scorer(
    tasks: tuple[str, ...], limit: int | None
) -> tuple[tuple[str, ...], Callable | None]:
    """The task names ("all": every task) with their data checked before any model loads, and
    ``evaluation.tasks.score_tasks``; no tasks: ((), None). Imported here, as only a run with
    tasks needs lm-eval."""
    if not tasks:
        return (), None
    from phasecode.evaluation import tasks as zero_shot

    names = zero_shot.TASKS if tasks == ("all",) else tasks
    return tuple(zero_shot.check_tasks(list(names), limit)), zero_shot.score_tasks


def evaluate_cell(
    cell: Cell,
    calibrated: Calibrated | Exception,
    settings: CompareSettings,
    windows: torch.Tensor,
    score: Callable | None,
    prepared: dict[tuple, float],
) -> dict:
    """One cell's record: convert, evaluate; any exception becomes a failed record."""
    base = {"cell": asdict(cell), "series": cell.series(), "date": time.strftime("%Y-%m-%d")}
    try:
        spiking = convert_cell(calibrated, cell, settings.train)
        if cell.group not in prepared:
            with spiking.analog():
                prepared[cell.group] = _ppl(spiking, windows, settings).ppl
        with spiking.coded():
            snn = _ppl(spiking, windows, settings)
        tasks = {}
        if score is not None:
            tasks = score(
                spiking,
                list(settings.tasks),
                settings.task_limit,
                settings.task_batch_size,
                progress=False,
            )
    except Exception as exc:  # recorded; the grid goes on (KeyboardInterrupt still stops it)
        message = str(exc) if isinstance(exc, PhasecodeError) else f"{type(exc).__name__}: {exc}"
        return {**base, "status": "failed", "error": message}
    seconds = spiking.report["seconds"]
    return {
        **base,
        "status": "ok",
        "ppl": snn.ppl,
        "ann_prepared_ppl": prepared[cell.group],
        "tasks": tasks,
        "mean_site_ratio": spiking.report["mean_ratio"],
        "seconds": {
            "calibration": seconds["calibration"],
            "training": seconds["training"],
            "conversion": seconds["calibration"] + seconds["training"],
            "eval": snn.seconds,
        },
        "torch_threads": torch.get_num_threads(),
    }


def _ppl(spiking: SpikingModel, windows: torch.Tensor, settings: CompareSettings) -> WindowNLL:
    return perplexity(spiking.model, windows, spiking.prefix, settings.batch_size, progress=False)
