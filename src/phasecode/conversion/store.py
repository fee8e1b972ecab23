"""Save and load converted spiking models as artifact directories.

A converted model is its base model + ``ConversionSpec`` + code table, so the artifact holds
only the neurons (safetensors), the spec, the site names, the base model's name and weight
fingerprint, and the conversion report. Loading re-applies the deterministic rotation and
rebuilds the prefix cache, after checking that the base model is the one the neurons were
trained for.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from phasecode.artifacts import SPIKING_MODEL_KIND, load_artifact, save_artifact
from phasecode.cache.fingerprint import matches as fingerprint_matches
from phasecode.coding.table import CodeTable
from phasecode.conversion.convert import ConversionSpec, SpikingModel, prepare
from phasecode.errors import PhasecodeError
from phasecode.models.devices import DTYPES
from phasecode.models.loading import load_model
from phasecode.models.precision import to_float64
from phasecode.models.resolve import locate
from phasecode.models.sites import spiking_sites

KIND = SPIKING_MODEL_KIND


def save_spiking(directory: str | Path, spiking: SpikingModel, base: dict) -> None:
    """Write the artifact; ``base`` is {"name", "fingerprint", "dtype"} of the unmodified base
    model (``base_record``)."""
    tensors = spiking.table.to_tensors()
    if spiking.silu_scales is not None:
        tensors["silu_scales"] = spiking.silu_scales.contiguous()
    if spiking.loss_curve is not None:
        tensors["loss_curve"] = spiking.loss_curve.contiguous()
    tensors.update(spiking.histograms)  # for the report's Fig. 1/3 (``phasecode report``)
    metadata = {
        "kind": KIND,
        "spec": asdict(spiking.spec),
        "sites": spiking.sites,
        "allocation": spiking.table.allocations,
        "base_model": base,
        "report": spiking.report,
        "loss_phases": spiking.loss_phases,
    }
    save_artifact(directory, tensors, metadata)


def _check_consistent(tensors: dict, metadata: dict) -> None:
    """The spec, the site list and the code table must describe the same neurons."""
    spec = metadata["spec"]
    table = CodeTable.from_tensors(tensors, metadata["allocation"])
    if table.timesteps != spec["timesteps"]:
        raise ValueError(f"spec says T={spec['timesteps']}, the table has {table.timesteps}")
    if table.sites != len(metadata["sites"]):
        raise ValueError(f"{len(metadata['sites'])} sites for {table.sites} table rows")
    for allocation in table.allocations or []:  # its sum is checked against the site's T
        if len(allocation) > spec["grains"]:
            raise ValueError(f"allocation {allocation} has more than {spec['grains']} grains")
    if table.signed != (spec.get("code", "binary") == "signed-digit"):
        raise ValueError(f"spec says code {spec.get('code', 'binary')!r}, the table disagrees")


def read_spiking_metadata(directory: str | Path) -> dict:
    """The artifact's metadata, checked to describe a converted model."""
    _, metadata = load_artifact(directory)
    if metadata.get("kind") != KIND:
        raise PhasecodeError(
            f"{directory} is not a converted model (kind {metadata.get('kind')!r}); "
            "make one with `phasecode convert`"
        )
    return metadata


def load_base_model(
    metadata: dict,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    base_model: str | None = None,
):
    """The artifact's base model and tokenizer (``base_model``: from there instead of where
    the artifact says), checked against its fingerprint in the dtype it was converted in,
    then cast to ``dtype`` (None: keep that dtype) on ``device``."""
    base = metadata["base_model"]
    name = base_model or base.get("name")
    if not name:
        raise PhasecodeError(
            "the artifact's base model was built in memory and has no name: pass the base "
            "model (--base-model PATH, or model= in Python)"
        )
    if base_model is None:
        try:
            locate(name)
        except PhasecodeError as err:
            raise PhasecodeError(
                f"the artifact's base model cannot be found ({err}); if it moved, point the "
                "artifact at it with --base-model PATH (base_model=PATH in Python)"
            ) from None
    converted = DTYPES[base.get("dtype", "float32")]
    model, tokenizer = load_model(name, dtype=converted, device=device)
    check_fingerprint(model, base, name)
    if dtype is not None and dtype != converted:
        model.to(dtype)
    model.phasecode_checked = base["fingerprint"]
    return model, tokenizer


def check_fingerprint(model, base: dict, name: str | None = None) -> None:
    """Refuse a base model whose weights are not those the neurons were trained for."""
    expected = base["fingerprint"]
    if getattr(model, "phasecode_checked", None) == expected:
        return  # checked on load, before a cast changed the weights' dtype
    same, found = fingerprint_matches(model, expected)
    if not same:
        raise PhasecodeError(
            f"the artifact was made from base model {name or base['name']} (fingerprint "
            f"{expected[:12]}); refusing to apply it to a different model (fingerprint "
            f"{found[:12]}): its weights or config changed since the conversion"
        )


def load_spiking(
    directory: str | Path,
    model=None,
    tokenizer=None,
    float64: bool = False,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    base_model: str | None = None,
) -> SpikingModel:
    """Rebuild a spiking model from an artifact and its base model (loaded unless given, on
    ``device`` in ``dtype``, from ``base_model`` if the artifact's has moved); ``float64``
    casts the checked base model to float64 end to end (``models.precision``)."""
    metadata = read_spiking_metadata(directory)
    if model is None:
        model, tokenizer = load_base_model(metadata, device, dtype, base_model)
    check_fingerprint(model, metadata["base_model"])
    tensors, metadata = load_artifact(directory, check=_check_consistent)
    if float64:
        to_float64(model)
    spec_fields = dict(metadata["spec"])
    spec_fields["prefix_tokens"] = tuple(spec_fields["prefix_tokens"])
    spec = ConversionSpec(**spec_fields)
    table = CodeTable.from_tensors(tensors, metadata["allocation"])
    expected = [site.name for site in spiking_sites(model, spec.lm_head)]
    if metadata["sites"] != expected:
        raise PhasecodeError(f"corrupt artifact: {directory}: its sites are not this model's")
    prepared = prepare(model, spec, tensors.get("silu_scales"))
    return SpikingModel(
        model, tokenizer, spec, table, metadata["sites"], prepared, metadata["report"]
    )
