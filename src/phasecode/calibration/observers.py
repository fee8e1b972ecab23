"""Run calibration text through a model and sample the activations at each site."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from phasecode.calibration.reservoir import Reservoir
from phasecode.errors import PhasecodeError
from phasecode.models.sites import Site

Hook = Callable[..., Any]


@contextmanager
def hooks(model: nn.Module, fns: Mapping[str, Hook], *, pre: bool = True) -> Iterator[None]:
    """Register hooks on submodules (by qualified name) for the duration of a with-block.

    `pre` selects forward pre-hooks fn(module, args) over forward hooks fn(module, args, output).
    Every hook is removed on exit, also when the block (or registration itself) raises, so a
    failed run never leaves the model instrumented.
    """
    handles = []
    try:
        for name, fn in fns.items():
            module = model.get_submodule(name)
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def collect_site_samples(
    model: nn.Module,
    sites: list[Site],
    batches: torch.LongTensor,
    samples_per_site: int = 10_000,
    seed: int = 0,
    skip_positions: int = 0,
    progress: bool = True,
    transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """A uniform sample of each site's input values over all calibration tokens.

    `batches` is [n_sequences, seq_len] token ids, fed one sequence per forward pass.
    Positions before `skip_positions` (e.g. BOS) are left out of the samples. `transforms` maps
    a site name to a function applied to its input before sampling (e.g. an online rotation).
    """
    if batches.dim() != 2 or not 0 <= skip_positions < batches.shape[1]:
        raise PhasecodeError(
            f"need token batches [n, seq_len] with 0 <= skip_positions < seq_len, got shape "
            f"{tuple(batches.shape)} and skip_positions={skip_positions}"
        )
    reservoirs = {site.name: Reservoir(samples_per_site, site.name, seed) for site in sites}
    transforms = transforms or {}
    fns = {
        site.modules[0]: _sampler(reservoirs[site.name], skip_positions, transforms.get(site.name))
        for site in sites
    }
    device = next(model.parameters()).device
    chunks = batches.split(1)
    with hooks(model, fns), torch.no_grad():
        for chunk in tqdm(chunks, desc="calibrating", unit="batch", disable=not progress):
            model(input_ids=chunk.to(device), use_cache=False, logits_to_keep=1)
    return {name: reservoir.values() for name, reservoir in reservoirs.items()}


def _sampler(reservoir: Reservoir, skip_positions: int, transform: Callable | None = None) -> Hook:
    """Pre-hook pushing the module input [batch, seq, features] from skip_positions on."""

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0][:, skip_positions:]
        reservoir.push(x if transform is None else transform(x))

    return hook
