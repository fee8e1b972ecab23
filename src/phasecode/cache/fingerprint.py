"""A model's fingerprint: what an artifact and every remembered measurement know it by.

It covers the whole content: every parameter's and buffer's name, shape, dtype and bytes, and
the full config (less what only says where or how it was saved). The same weights give the
same fingerprint however they were loaded: by phasecode, by transformers directly, or built
in memory.

Hashing a 7B model's content takes a while, so a model loaded from files is hashed once: the
fingerprint is remembered per (path, size, mtime, ctime, inode) of its files and the dtype it
was loaded in ($PHASECODE_CACHE/fingerprints), and a later load of the same files reads it
back. A strided sample of the weights, taken with it, tells whether the model was changed in
memory since (then it is hashed again). Weights offloaded to disk (``--device-map auto``) are
read from the model's safetensors files for the hash. Artifacts made before whole-content
fingerprints carry the sampled digest (16 hex digits) and are checked with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import suppress
from pathlib import Path

import torch
from torch import nn

from phasecode.artifacts import write_json_atomic
from phasecode.cache.digests import RACY_NS, json_digest
from phasecode.cache.root import kind_dir, writable
from phasecode.errors import PhasecodeError

VERSION = "phasecode-fingerprint-2"
KIND = "fingerprints"
LEGACY_LENGTH = 16  # the sampled digests artifacts recorded before
SAMPLES = 4096  # elements per parameter in the sampled digest
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# config fields that say how or where a model was saved, not what it computes
VOLATILE_CONFIG = {"transformers_version", "dtype", "torch_dtype", "architectures"}


def model_fingerprint(model: nn.Module) -> str:
    """The model's fingerprint (module docstring), remembered on the model object while its
    weights give the same sample."""
    stamped = getattr(model, "phasecode_fingerprint", None)
    if stamped is not None and _unchanged(model, stamped[1]):
        return stamped[0]
    fingerprint = content_fingerprint(model, getattr(model, "phasecode_files", None))
    model.phasecode_fingerprint = (fingerprint, _sample_or_none(model))
    return fingerprint


def remember_loaded(model: nn.Module, location: Path) -> str:
    """The fingerprint of a model just loaded from the files in ``location``: read back from
    the index when those files (unchanged) were fingerprinted in this dtype before, else
    hashed now and remembered."""
    location = Path(location)
    model.phasecode_files = location
    dtype = str(next(model.parameters()).dtype)
    stamps, racy = _stamps(location)
    key = json_digest({"version": VERSION, "dtype": dtype, "files": stamps})
    index = _read_index()
    fingerprint = index.get(key)
    if not isinstance(fingerprint, str):
        fingerprint = content_fingerprint(model, location)
        if not racy and writable():
            index = {k: v for k, v in _read_index().items() if isinstance(v, str)}
            with suppress(PhasecodeError):
                write_json_atomic(_index_path(), index | {key: fingerprint})
    model.phasecode_fingerprint = (fingerprint, _sample_or_none(model))
    return fingerprint


def content_fingerprint(model: nn.Module, files: Path | None = None) -> str:
    """Every parameter's and buffer's name, shape, dtype and bytes, and the full config; a
    tensor offloaded to the meta device is read from ``files`` (safetensors)."""
    digest = hashlib.sha256(f"{VERSION};".encode())
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(_canonical_config(config.to_dict()).encode())
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    offloaded = _OffloadedReader(files)
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        if tensor.device.type == "meta":
            tensor = offloaded.read(name, tensor.dtype)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        values = tensor.contiguous().cpu().reshape(-1)
        digest.update(values.view(torch.uint8).numpy().tobytes() if values.numel() else b"")
    return digest.hexdigest()[:32]


class _OffloadedReader:
    """Reads a tensor by name from a model directory's safetensors files."""

    def __init__(self, files: Path | None):
        self.files = files
        self._where: dict[str, Path] | None = None

    def read(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        from safetensors import safe_open

        path = self._locations().get(name)
        if path is None:
            raise PhasecodeError(
                f"cannot fingerprint the model: {name} is on the meta device (no values: built "
                "with --device meta, or offloaded without safetensors files to read it from)"
            )
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(name).to(dtype)

    def _locations(self) -> dict[str, Path]:
        if self._where is None:
            self._where = {}
            if self.files is not None:
                from safetensors import safe_open

                for path in sorted(Path(self.files).glob("*.safetensors")):
                    with safe_open(str(path), framework="pt") as handle:
                        self._where.update({key: path for key in handle.keys()})  # noqa: SIM118
        return self._where


def sampled_fingerprint(model: nn.Module) -> str:
    """The strided-sample digest (artifacts before whole-content fingerprints recorded it):
    the architecture sizes and, per parameter, its name, shape, dtype and a fixed strided
    subsample of its values, the stride coprime with the last dimension so the samples walk
    through every column."""
    config = model.config
    digest = hashlib.sha256()
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        digest.update(f"{key}={getattr(config, key, None)};".encode())
    for name, param in model.named_parameters():
        if param.device.type == "meta":
            raise PhasecodeError(
                f"cannot fingerprint the model: parameter {name} is on the meta device (no "
                f"values: built with --device meta, or offloaded to disk by --device-map auto)"
            )
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype};".encode())
        digest.update(_strided_sample(param.detach()).numpy().tobytes())
    return digest.hexdigest()[:LEGACY_LENGTH]


def matches(model: nn.Module, recorded: str) -> tuple[bool, str]:
    """Whether ``model`` is the one a recorded fingerprint names, and its own fingerprint
    (of the recorded kind: a legacy sampled digest is checked as one)."""
    legacy = len(recorded) == LEGACY_LENGTH
    found = sampled_fingerprint(model) if legacy else model_fingerprint(model)
    return found == recorded, found


def _unchanged(model: nn.Module, sample: str | None) -> bool:
    """Whether the weights still give the sample taken with the stamp (offloaded weights,
    which cannot be sampled, are taken as unchanged)."""
    return sample is None or _sample_or_none(model) == sample


def _sample_or_none(model: nn.Module) -> str | None:
    try:
        return sampled_fingerprint(model)
    except PhasecodeError:
        return None


def _canonical_config(config: dict) -> str:
    """The config without what says where or how it was saved or is run (private fields, the
    path, the transformers version, the storage dtype: each weight's dtype is hashed)."""
    kept = {k: v for k, v in config.items() if k not in VOLATILE_CONFIG and not k.startswith("_")}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)


def _strided_sample(tensor: torch.Tensor) -> torch.Tensor:
    """A fixed subsample of about SAMPLES elements, as float32 on the CPU."""
    flat = tensor.reshape(-1)
    stride = max(1, flat.numel() // SAMPLES)
    last = tensor.shape[-1] if tensor.dim() else 1
    while math.gcd(stride, last) != 1:
        stride += 1
    return flat[::stride][:SAMPLES].float().cpu()


def _stamps(location: Path) -> tuple[list, bool]:
    """(path, size, mtime, ctime, inode) of the config and weight files, and whether any was
    written so recently that its stamp cannot be trusted yet (coarse timestamps)."""
    now = time.time_ns()
    stamps, racy = [], False
    for path in sorted(location.iterdir()):
        if path.name == "config.json" or path.suffix in WEIGHT_SUFFIXES:
            stat = path.stat()
            stamps.append(
                [path.name, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
            )
            racy = racy or max(stat.st_mtime_ns, stat.st_ctime_ns) > now - RACY_NS
    return [str(location.resolve()), stamps], racy


def _index_path() -> Path:
    return kind_dir(KIND) / "index.json"


def _read_index() -> dict:
    try:
        index = json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}
