"""The settings of a comparison grid (parsed from the command line by ``cli/compare.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from phasecode.inference.nll import EVAL_BATCH_SIZE
from phasecode.models.placement import CPU, Placement
from phasecode.settings import SamplingSettings, TrainConfig

if TYPE_CHECKING:  # the grid pulls in transformers; the CLI parser should start fast
    from phasecode.comparison.grid import Cell


@dataclass(frozen=True)
class CompareSettings:
    """The grid and everything its cells share."""

    model: str
    cells: tuple[Cell, ...]
    timesteps: tuple[int, ...]  # the grid's T axis (the plot's x axis)
    sampling: SamplingSettings
    train: TrainConfig
    corpus: str = "wikitext2"
    seq_len: int = 512
    limit: int = 8
    tasks: tuple[str, ...] = ()  # may be ("all",), resolved by the job
    task_limit: int | None = None
    batch_size: int = EVAL_BATCH_SIZE
    task_batch_size: int = 16
    placement: Placement = CPU
