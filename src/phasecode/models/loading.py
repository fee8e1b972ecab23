"""Load a (model, tokenizer) pair from a name (``resolve``): a model directory or hub id
through transformers, a GGUF file through its dequantized copy (``gguf``). A model loaded
from files is fingerprinted by them (``cache.fingerprint``), once per file."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from phasecode.cache.fingerprint import model_fingerprint, remember_loaded
from phasecode.errors import PhasecodeError, first_line
from phasecode.models.devices import (
    check_device_map,
    check_dtype,
    check_memory,
    dtype_name,
    resolve_device,
    resolve_dtype,
)
from phasecode.models.gguf import (
    check_phasecode_architecture,
    dequantize,
    dequantized_copy,
    read_gguf_header,
)
from phasecode.models.resolve import DEFAULT_MODEL, config_parameters, locate


def load_model(
    name: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    device_map: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode, in `dtype` on `device`.

    `name` is DEFAULT_MODEL, a .gguf file (dequantized once into a safetensors copy in
    `dtype`), a local model directory, or a hub id passed to transformers unchanged. Bad
    names, devices, dtypes and models too large for the device fail with a PhasecodeError
    before any weights are read. device_map="auto" hands placement to accelerate (models
    larger than one GPU); device "meta" builds the model from its config without weights
    (tests, size checks).
    """
    target, dtype = _placement(dtype, device, device_map)
    source = locate(name)
    if source.kind == "gguf":
        info = read_gguf_header(Path(source.location))
        check_phasecode_architecture(info.path, info.architecture)
        check_memory(name, info.parameters, dtype, target, device_map)
        location = dequantized_copy(info, name, dtype)
        if location is None:  # no writable cache: dequantized in memory, every time
            model, tokenizer = dequantize(info.path, name, dtype)
            return model.to(target).eval(), tokenizer
    else:
        parameters = config_parameters(source.location)
        if parameters is not None:
            check_memory(name, parameters, dtype, target, device_map)
        location = source.location
    model, tokenizer = _from_pretrained(name, location, dtype, target, device_map)
    if target.type != "meta":
        _stamp(model, location)
    return model.eval(), tokenizer


def check_fits(
    name: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    device_map: str | None = None,
) -> int | None:
    """Check, before loading, that `name`'s weights fit on `device` in `dtype`.

    Also runs every cheap check on the name (path, directory contents, GGUF header and its
    architecture). Returns the estimated weight bytes, or None when the size cannot be known
    without loading (a hub id offline, a config phasecode cannot count). Raises
    PhasecodeError otherwise.
    """
    target, dtype = _placement(dtype, device, device_map)
    source = locate(name)
    if source.kind == "gguf":
        info = read_gguf_header(Path(source.location))
        check_phasecode_architecture(info.path, info.architecture)
        parameters: int | None = info.parameters
    else:
        parameters = config_parameters(source.location)
    if parameters is None:
        return None
    return check_memory(name, parameters, dtype, target, device_map)


def base_record(reference: str | None, model) -> dict:
    """What an artifact keeps of its base model: where to find it (resolvable from any
    directory), its fingerprint, and the dtype the fingerprint was taken in."""
    dtype = dtype_name(next(model.parameters()).dtype)
    return {"name": reference, "fingerprint": model_fingerprint(model), "dtype": dtype}


def _stamp(model: PreTrainedModel, location: str | Path) -> None:
    """Fingerprint a model just loaded by its files: the directory, the GGUF's copy, or a hub
    id's downloaded snapshot (a hub model not in the local cache is fingerprinted by content
    when a fingerprint is needed)."""
    directory = Path(location)
    if not directory.is_dir():
        directory = _hub_snapshot(str(location))
    if directory is not None:
        with suppress(PhasecodeError):
            remember_loaded(model, directory)


def _hub_snapshot(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not downloaded, or no hub library: content fingerprint
        return None


def _placement(
    dtype: torch.dtype | str, device: torch.device | str, device_map: str | None
) -> tuple[torch.device, torch.dtype]:
    """Checked device and dtype, from strings (CLI spelling) or torch objects."""
    target = resolve_device(device) if isinstance(device, str) else device
    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, target)
    else:
        check_dtype(dtype, target)
    check_device_map(device_map)
    return target, dtype


def _from_pretrained(
    name: str,
    source: str | Path,
    dtype: torch.dtype,
    device: torch.device,
    device_map: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Call transformers, turning its many failure modes into one line naming the model."""
    kwargs: dict[str, object] = {}
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif device.type == "cuda":
        kwargs["device_map"] = {"": str(device)}  # straight onto the GPU, no CPU copy first
    try:
        if device.type == "meta" and device_map is None:
            config = AutoConfig.from_pretrained(source)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        where = f" from {source}" if str(source) != name else ""
        raise PhasecodeError(f"could not load model {name!r}{where}: {first_line(exc)}") from exc
    return model, tokenizer
