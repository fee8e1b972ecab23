"""The comparison grid: one cell per conversion, cells grouped by what their calibration shares.

A cell is one conversion setting (method, T, grains, training mode, weight bits, outlier
handling). Cells that differ only in the neuron (method, T, grains, mode) share one prepared
model and one set of calibration samples, exactly as separate ``phasecode convert`` runs would
produce them (same rotation seed, same prefix, same samples), so the grid calibrates once per
group and fits every cell of the group from it. ``calibrations`` is that loop; the compare job
and ``benchmarks/conversion.py`` both use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from itertools import groupby

from phasecode.conversion.convert import Calibrated, SpikingModel, calibrate, fit_spiking
from phasecode.errors import PhasecodeError
from phasecode.inference.prefix_choice import AUTO, NO_PREFIX
from phasecode.models.quantize import check_weight_bits
from phasecode.settings import METHODS, TTFS_TIMESTEPS, FitSettings, SamplingSettings, TrainConfig

NAMES = {
    "mgpc": "Ours",
    "las": "LAS",
    "spikedattention": "SpikedAttention",
    "ttfs": "TTFSFormer",
    "rate": "Rate (IF)",
    "phase": "Phase",
}


@dataclass(frozen=True)
class Cell:
    """One conversion of the grid. ``grains`` and ``mode`` only matter for mgpc (1 and None
    for the fixed codes, so that a baseline appears once per T)."""

    method: str
    timesteps: int
    grains: int = 1
    mode: str | None = None
    weight_bits: int | None = None
    rotate: bool = True
    prefix: bool = True

    @property
    def group(self) -> tuple[bool, bool, int | None]:
        """Cells with the same group share calibration."""
        return (self.rotate, self.prefix, self.weight_bits)

    def fit(self, train: TrainConfig) -> FitSettings:
        """The neuron settings; validates the cell (unknown method, grains > T, ...). Every
        cell codes with the paper's binary neuron at its fitted range, whatever `convert`'s
        defaults: the grid reproduces the paper's comparison."""
        config = replace(train, mode=self.mode) if self.mode else train
        return FitSettings(
            self.method,
            self.timesteps,
            self.grains,
            config,
            code="binary",
            neuron_range="fitted",
        )

    def series(self) -> str:
        """Row label without T: 'Ours (Grain=2)', 'Ours (Grain=2, joint)', 'LAS', ..."""
        name = NAMES[self.method]
        if self.method == "mgpc":
            extra = "" if self.mode in (None, "alternating") else f", {self.mode}"
            name = f"{name} (Grain={self.grains}{extra})"
        return name

    def slug(self) -> str:
        bits = f"w{self.weight_bits}" if self.weight_bits else "wfp"
        outliers = f"rot{int(self.rotate)}-pre{int(self.prefix)}"
        mode = self.mode or "fixed"
        return f"{self.method}-T{self.timesteps}-g{self.grains}-{mode}-{bits}-{outliers}"


def build_cells(
    methods: list[str],
    timesteps: list[int],
    grains: list[int | str],
    modes: list[str],
    weight_bits: list[int | None],
    rotate: bool = True,
    prefix: bool = True,
) -> list[Cell]:
    """The grid in table order: per weight width, TTFS at T = 128, then per T each method
    (mgpc once per grains × mode; grains "T" means grains = T). Invalid cells are user errors."""
    outliers = {"rotate": rotate, "prefix": prefix}
    for method in methods:
        if method not in METHODS:
            raise_unknown(method)
    for mode in modes:
        TrainConfig(mode=mode)
    cells: list[Cell] = []
    for bits in weight_bits:
        check_weight_bits(bits)
        if "ttfs" in methods:
            cells.append(Cell("ttfs", TTFS_TIMESTEPS, weight_bits=bits, **outliers))
        for t in timesteps:
            for method in methods:
                if method == "mgpc":
                    cells += [
                        Cell(method, t, t if g == "T" else g, mode, bits, **outliers)
                        for g in grains
                        for mode in modes
                    ]
                elif method != "ttfs":
                    cells.append(Cell(method, t, weight_bits=bits, **outliers))
    unique = list(dict.fromkeys(cells))
    for cell in unique:
        cell.fit(TrainConfig())
    return unique


def raise_unknown(method: str) -> None:
    """Unknown method: a user error (SpikeLLM gets the reason it is not in the grid)."""
    if method.lower() == "spikellm":
        raise PhasecodeError(
            "SpikeLLM is not reproduced (W4A8 quantized ANN + saliency-based spiking trained "
            "through the decoder, not a neuron setting); see docs/comparison.md"
        )
    raise PhasecodeError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def cell_id(cell: Cell, context: dict) -> str:
    """A readable key that changes with every setting of the cell and of its ``context`` (base
    model fingerprint, sampling, training and evaluation settings)."""
    return f"{cell.slug()}-{digest({'cell': asdict(cell), **context})}"


def digest(data: dict) -> str:
    """Short stable hash of a JSON-able dict."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


Loader = Callable[[], tuple[object, object]]  # () -> (fresh base model, tokenizer)


def calibrations(
    load: Loader, cells: list[Cell], sampling: SamplingSettings, lm_head: bool = True
) -> Iterator[tuple[Cell, Calibrated | Exception]]:
    """Each cell with its group's calibration (one fresh model per group, in order of first
    appearance), or with the exception that calibration raised, so one bad group does not
    stop the others."""
    order = list(dict.fromkeys(c.group for c in cells))
    ordered = sorted(cells, key=lambda c: order.index(c.group))  # stable within a group
    for (rotate, prefix, bits), members in groupby(ordered, key=lambda c: c.group):
        try:
            model, tokenizer = load()
            result: Calibrated | Exception = calibrate(
                model,
                tokenizer,
                sampling,
                rotate,
                AUTO if prefix else NO_PREFIX,
                lm_head,
                progress=False,
                weight_bits=bits,
            )
        except Exception as exc:  # recorded per cell by the caller; KeyboardInterrupt passes
            result = exc
        for cell in members:
            yield cell, result


def convert_cell(
    calibrated: Calibrated | Exception, cell: Cell, train: TrainConfig
) -> SpikingModel:
    """The cell's spiking model; re-raises its group's calibration error."""
    if isinstance(calibrated, Exception):
        raise calibrated
    return fit_spiking(calibrated, cell.fit(train), progress=False)
