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

from phasecode.artifacts import load_artifact, save_artifact
from phasecode.coding.table import CodeTable
from phasecode.conversion.convert import ConversionSpec, SpikingModel, prepare
from phasecode.errors import PhasecodeError
from phasecode.models.loading import load_model, model_fingerprint
from phasecode.models.precision import to_float64

KIND = "spiking-model"


def save_spiking(directory: str | Path, spiking: SpikingModel, base: dict) -> None:
    """Write the artifact; ``base`` is {"name", "fingerprint"} of the unmodified base model."""
    tensors = spiking.table.to_tensors()
    if spiking.silu_scales is not None:
        tensors["silu_scales"] = spiking.silu_scales.contiguous()
    if spiking.loss_curve is not None:
        tensors["loss_curve"] = spiking.loss_curve.contiguous()
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


def read_spiking_metadata(directory: str | Path) -> dict:
    """The artifact's metadata, checked to describe a converted model."""
    _, metadata = load_artifact(directory)
    if metadata.get("kind") != KIND:
        raise PhasecodeError(
            f"{directory} is not a converted model (kind {metadata.get('kind')!r}); "
            "make one with `phasecode convert`"
        )
    return metadata


def load_spiking(
    directory: str | Path, model=None, tokenizer=None, float64: bool = False
) -> SpikingModel:
    """Rebuild a spiking model from an artifact and its base model (loaded unless given);
    ``float64`` casts the checked base model to float64 end to end (``models.precision``)."""
    metadata = read_spiking_metadata(directory)
    if model is None:
        model, tokenizer = load_model(metadata["base_model"]["name"])
    tensors, metadata = load_artifact(directory, expected_fingerprint=model_fingerprint(model))
    if float64:
        to_float64(model)
    spec_fields = dict(metadata["spec"])
    spec_fields["prefix_tokens"] = tuple(spec_fields["prefix_tokens"])
    spec = ConversionSpec(**spec_fields)
    table = CodeTable.from_tensors(tensors, metadata["allocation"])
    scales = tensors.get("silu_scales")
    down, prefix = prepare(model, spec, scales)
    return SpikingModel(
        model, tokenizer, spec, table, metadata["sites"], down, prefix, metadata["report"], scales
    )
