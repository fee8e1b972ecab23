"""The `neurons` job: sample every site of a model, fit one neuron per site, score it.

Samples are split into a training half and a held-out half of equal size. Every neuron is
fitted on the training half only; its MSE, the Lloyd-Max bound and the best uniform quantizer
(both fitted on the same training half) are all scored on the held-out half.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from phasecode.calibration.observers import collect_site_samples
from phasecode.calibration.text import DEFAULT_CALIBRATION, read_texts, token_batches
from phasecode.coding import baselines
from phasecode.coding.allocation import even_allocation, validate_timesteps
from phasecode.coding.neuron import value
from phasecode.coding.table import CodeTable
from phasecode.errors import PhasecodeError
from phasecode.models.hadamard import hadamard_rotation
from phasecode.models.sites import Site, linear_input_sites
from phasecode.training.alternating import TrainConfig, train_neurons
from phasecode.training.calibrate import fit_tau
from phasecode.training.search import search_allocation
from phasecode.training.yardstick import lloyd_max_mse, uniform_mse

METHODS = ("mgpc", "las", "spikedattention", "ttfs", "rate", "phase")
PHASE_LIMIT = 32  # T above this makes 2^T levels meaningless in float32
TTFS_LIMIT = 128


@dataclass(frozen=True)
class SamplingSettings:
    """Where activation samples come from and how outliers are kept out of them."""

    samples: int = 10_000  # training samples per site (as many again are held out)
    calibration: Path = DEFAULT_CALIBRATION
    sequences: int = 16
    seq_len: int = 256
    prefix_bos: bool = True  # prepend BOS and leave it out of the samples (prefix token)
    rotate_down: bool = True  # online Hadamard rotation of the down_proj input
    seed: int = 0


@dataclass(frozen=True)
class FitSettings:
    method: str = "mgpc"
    timesteps: int = 8
    grains: int = 2
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            choices = ", ".join(METHODS)
            raise PhasecodeError(f"unknown method {self.method!r}; choose from {choices}")
        validate_timesteps(self.timesteps, TTFS_LIMIT if self.method == "ttfs" else PHASE_LIMIT)
        if not 1 <= self.grains <= self.timesteps:
            raise PhasecodeError(f"grains must be in 1..T={self.timesteps}, got {self.grains}")


@dataclass
class SiteSamples:
    sites: list[Site]
    train: Tensor  # [S, N]
    heldout: Tensor  # [S, N]
    seconds: float


@dataclass
class FitResult:
    table: CodeTable
    loss_curve: Tensor | None  # [S, steps] for trained codes (Figure 4)
    seconds: float
    loss_phases: list[str] = field(default_factory=list)  # which parameters each step moved


def down_rotations(model, sites: list[Site], seed: int) -> dict[str, callable]:
    """Online Hadamard transforms for the down_proj sites, keyed by site name."""
    width = model.config.intermediate_size
    rotation = hadamard_rotation(width, seed)
    return {s.name: (lambda x, r=rotation: x @ r) for s in sites if s.kind == "down"}


def sample_sites(model, tokenizer, settings: SamplingSettings, progress: bool = True):
    """Collect 2×samples values per linear-input site and split them train / held-out."""
    start = time.perf_counter()
    texts = read_texts(settings.calibration)
    batches = token_batches(
        tokenizer, texts, settings.sequences, settings.seq_len, add_bos=settings.prefix_bos
    )
    skip = 1 if settings.prefix_bos and tokenizer.bos_token_id is not None else 0
    sites = linear_input_sites(model)
    transforms = down_rotations(model, sites, settings.seed) if settings.rotate_down else {}
    samples = collect_site_samples(
        model,
        sites,
        batches,
        2 * settings.samples,
        settings.seed,
        skip,
        progress,
        transforms=transforms,
    )
    train, heldout = split_samples(samples, [s.name for s in sites], settings)
    return SiteSamples(sites, train, heldout, time.perf_counter() - start)


def split_samples(
    samples: dict[str, Tensor], names: list[str], settings: SamplingSettings
) -> tuple[Tensor, Tensor]:
    """Equal random train / held-out halves [S, samples]; every site needs 2×samples values."""
    fewest = min(samples[name].numel() for name in names)
    if fewest < 2 * settings.samples:
        raise PhasecodeError(
            f"calibration text gave only {fewest} values per site; "
            f"need {2 * settings.samples} (use more --sequences or fewer --samples)"
        )
    stacked = torch.stack([samples[name].float() for name in names])
    gen = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(stacked.shape[1], generator=gen)
    train, heldout = stacked[:, order].chunk(2, dim=1)
    return train.contiguous(), heldout.contiguous()


def fit_codes(train: Tensor, settings: FitSettings, progress: bool = True) -> FitResult:
    """One code table row per site, by the chosen method."""
    start = time.perf_counter()
    sites, t = train.shape[0], settings.timesteps
    curve, phases = None, []
    if settings.method == "mgpc":
        if settings.grains > 1:
            allocation, _ = search_allocation(train, t, settings.grains, settings.train)
        else:
            allocation = [even_allocation(t, 1)] * sites
        result = train_neurons(train, allocation, settings.train, progress=progress)
        table, curve, phases = result.table, result.loss_curve, result.phases
    elif settings.method == "phase":
        table = baselines.phase(sites, t)
    else:
        build = baselines.FIXED_CODES[settings.method]
        table = build(fit_tau(settings.method, train, t, build), t)
    return FitResult(table, curve, time.perf_counter() - start, phases)


def score_sites(table: CodeTable, train: Tensor, heldout: Tensor) -> dict[str, Tensor]:
    """Held-out MSE of the neurons and of both yardsticks fitted on ``train``."""
    t = table.timesteps
    mse = (value(heldout, table) - heldout).pow(2).mean(1)
    bound = lloyd_max_mse(train, heldout, t)
    uniform = uniform_mse(train, heldout, t)
    tiny = torch.finfo(mse.dtype).tiny
    return {
        "mse": mse,
        "lloyd_max_mse": bound,
        "ratio": mse / bound.clamp_min(tiny),
        "uniform_mse": uniform,
        "uniform_ratio": uniform / bound.clamp_min(tiny),
    }
