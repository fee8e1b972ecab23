"""Samples of every linear-input site of a model (the ``neurons`` job's data): calibration
text through the model, a reservoir per site, split into equal training and held-out halves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from phasecode.calibration.observers import collect_site_samples
from phasecode.calibration.text import read_texts, token_batches
from phasecode.errors import PhasecodeError
from phasecode.models.hadamard import OnlineRotation
from phasecode.models.sites import Site, linear_input_sites
from phasecode.settings import SamplingSettings


@dataclass
class SiteSamples:
    sites: list[Site]
    train: Tensor  # [S, N]
    heldout: Tensor  # [S, N]
    seconds: float


def down_rotations(model, sites: list[Site], seed: int) -> dict[str, callable]:
    """Online Hadamard transforms for the down_proj sites, keyed by site name."""
    rotation = OnlineRotation(model.config.intermediate_size, seed)
    return {s.name: rotation for s in sites if s.kind == "down"}


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
