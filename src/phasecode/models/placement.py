"""Where a model runs, threaded from the CLI through every job: device, dtype and accelerate's
device map. Neurons fire in float32 whatever ``dtype`` is (``coding.neuron.firing_dtype``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    """``dtype`` None means: keep the dtype an artifact was converted in."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype | None = torch.float32
    device_map: str | None = None


CPU = Placement()


def load_placed(name: str, placement: Placement = CPU):
    """``load_model`` on the placement's device, in its dtype (float32 when unset)."""
    from phasecode.models.loading import load_model

    return load_model(
        name,
        dtype=placement.dtype or torch.float32,
        device=placement.device,
        device_map=placement.device_map,
    )
