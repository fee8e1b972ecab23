"""GGUF files: their header read without touching tensor data, and the dequantized copy.

A GGUF (the default model is one, shipped inside a PyPI package) is dequantized once into a
safetensors copy under $PHASECODE_CACHE/models, in the dtype it is asked for (bfloat16 halves
a 7B's copy), named by the file's content hash, the dtype and the versions of the libraries
that dequantize it; every later load is a plain fast load. Building a copy holds a lock, so
two processes converting one GGUF dequantize it once (the second waits, then reads it); a
copy is written under a temporary name and renamed into place, temporary directories a killed
process left are removed on the next build, and a copy that is incomplete is rebuilt. The
copies are bounded (``MODELS_MAX_SIZE``): past the bound the least recently used go.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from phasecode.cache.digests import file_sha256, json_digest
from phasecode.cache.inventory import parse_size, tree_size
from phasecode.cache.locks import building, is_busy
from phasecode.cache.root import kind_dir, writable
from phasecode.errors import PhasecodeError, first_line
from phasecode.models.devices import check_memory, dtype_name

KIND = "models"  # the cache folder of dequantized copies
MARKER = "phasecode-source.json"  # written last: what the copy is, and its files' sizes
# the bound on the dequantized copies, in bytes (PHASECODE_MODELS_MAX_SIZE, e.g. 20G)
MODELS_MAX_SIZE_ENV = "PHASECODE_MODELS_MAX_SIZE"
MODELS_MAX_SIZE = "20G"
# GGUF architecture names of the model types phasecode has an adapter for (models/adapters)
# and transformers can read from a GGUF (it reads no OLMo 2 GGUF: load those from a directory)
PHASECODE_ARCHITECTURES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma3": "gemma3_text",
}

# GGUF header layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
_GGUF_MAGIC = b"GGUF"
_GGUF_VERSIONS = (2, 3)
_GGUF_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i",
    6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass(frozen=True)
class GgufInfo:
    """What the header of a GGUF file says, read without touching its tensor data."""

    path: Path
    architecture: str
    parameters: int  # elements over all tensors: the dequantized model's parameter count


def read_gguf_header(path: Path) -> GgufInfo:
    """Parse and check a GGUF file's header (not its tensor data): cheap, and it catches
    garbage, truncated files and architectures or tokenizers transformers cannot read."""
    try:
        with path.open("rb") as handle:
            head = handle.read(24)
            if len(head) < 24 or head[:4] != _GGUF_MAGIC:
                raise PhasecodeError(
                    f"{path} is not a GGUF file: it does not start with the GGUF magic bytes"
                )
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as blob:
                metadata, tensors, data_start = _parse_gguf(blob, len(blob), path)
    except (struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        raise PhasecodeError(f"{path} is not a readable GGUF file: corrupt header ({exc})") from exc
    except OSError as exc:
        raise PhasecodeError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _check_gguf(path, metadata, tensors, data_start)


def _parse_gguf(
    blob: mmap.mmap, size: int, path: Path
) -> tuple[dict[str, object], list[tuple[str, tuple[int, ...], int, int]], int]:
    """(metadata, [(name, dims, ggml type, offset)], start of tensor data). String arrays (the
    vocabulary, merges) are skipped and stored as their length."""
    version, tensor_count, kv_count = struct.unpack_from("<IQQ", blob, 4)
    if version not in _GGUF_VERSIONS:
        raise PhasecodeError(f"{path} is GGUF version {version}; transformers reads versions 2-3")
    if kv_count > size or tensor_count > size:
        raise PhasecodeError(f"{path} is not a readable GGUF file: corrupt header counts")
    pos = 24
    metadata: dict[str, object] = {}
    for _ in range(kv_count):
        key, pos = _gguf_string(blob, pos)
        (kind,) = struct.unpack_from("<I", blob, pos)
        metadata[key], pos = _gguf_value(blob, pos + 4, kind, size)
    tensors = []
    for _ in range(tensor_count):
        name, pos = _gguf_string(blob, pos)
        (ndim,) = struct.unpack_from("<I", blob, pos)
        dims = struct.unpack_from(f"<{ndim}Q", blob, pos + 4)
        kind, offset = struct.unpack_from("<IQ", blob, pos + 4 + 8 * ndim)
        pos += 4 + 8 * ndim + 12
        tensors.append((name, tuple(dims), kind, offset))
    alignment = metadata.get("general.alignment", 32)
    alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
    return metadata, tensors, (pos + alignment - 1) // alignment * alignment


def _gguf_string(blob: mmap.mmap, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", blob, pos)
    end = pos + 8 + length
    if end > len(blob):
        raise struct.error("string runs past the end of the file")
    return blob[pos + 8 : end].decode("utf-8"), end


def _gguf_value(blob: mmap.mmap, pos: int, kind: int, size: int) -> tuple[object, int]:
    """One metadata value and the offset after it; arrays come back as their length."""
    if kind in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[kind]
        return struct.unpack_from(fmt, blob, pos)[0], pos + struct.calcsize(fmt)
    if kind == _GGUF_STRING:
        return _gguf_string(blob, pos)
    if kind == _GGUF_ARRAY:
        element, count = struct.unpack_from("<IQ", blob, pos)
        pos += 12
        if count > size - pos:
            raise struct.error("array longer than the file")
        if element in _GGUF_SCALARS:
            return count, pos + count * struct.calcsize(_GGUF_SCALARS[element])
        for _ in range(count):
            _, pos = _gguf_value(blob, pos, element, size)
        return count, pos
    raise struct.error(f"unknown metadata value type {kind}")


def _check_gguf(
    path: Path,
    metadata: dict[str, object],
    tensors: list[tuple[str, tuple[int, ...], int, int]],
    data_start: int,
) -> GgufInfo:
    """Refuse what transformers' GGUF loader would fail on, before any tensor is read."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise PhasecodeError(f"{path} is not a model GGUF: no general.architecture in its header")
    supported = _gguf_architectures()
    if architecture not in supported:
        raise PhasecodeError(
            f"{path}: GGUF architecture {architecture!r} is not supported by transformers' GGUF "
            f"loader (supported: {', '.join(sorted(supported))})"
        )
    tokenizer = metadata.get("tokenizer.ggml.model")
    tokenizers = _gguf_tokenizers()
    if tokenizer is None:
        raise PhasecodeError(f"{path} has no tokenizer (tokenizer.ggml.model) in its header")
    if tokenizers and tokenizer not in tokenizers:
        raise PhasecodeError(
            f"{path}: GGUF tokenizer {tokenizer!r} is not supported by transformers "
            f"(supported: {', '.join(sorted(tokenizers))})"
        )
    if not tensors:
        raise PhasecodeError(f"{path} holds no tensors")
    parameters, end = 0, data_start
    for name, dims, kind, offset in tensors:
        if kind not in GGML_QUANT_SIZES:
            raise PhasecodeError(f"{path}: tensor {name} has unknown ggml type {kind}")
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        elements = math.prod(dims)
        parameters += elements
        end = max(end, data_start + offset + elements // block * block_bytes)
    size = path.stat().st_size
    if end > size:
        raise PhasecodeError(
            f"{path} is truncated: its tensors need {end} bytes but the file has {size}"
        )
    return GgufInfo(path, architecture, parameters)


def _gguf_architectures() -> set[str]:
    """GGUF architectures transformers can load: its legacy table and its newer loader."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}
    try:
        from transformers.integrations.gguf.gguf_conversion_mapping import GGUF_ARCHS
    except ImportError:
        return names
    return names | set(GGUF_ARCHS)


def _gguf_tokenizers() -> set[str]:
    """tokenizer.ggml.model values transformers can build a tokenizer from (empty: unknown)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_TYPES
    except ImportError:
        return set()
    return set(GGUF_TOKENIZER_TYPES)


def gguf_cache_path(path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Where a GGUF's dequantized copy in ``dtype`` lives: named by the file's content, the
    dtype and the dequantizing libraries' versions, so a changed file or library gets a new
    copy and the same file under another name reuses the old one."""
    versions = {name: _version(name) for name in ("transformers", "gguf")}
    tag = json_digest(versions)[:8]
    return kind_dir(KIND) / f"gguf-{file_sha256(path)[:32]}-{dtype_name(dtype)}-{tag}"


def dequantized_copy(info: GgufInfo, name: str, dtype: torch.dtype) -> Path | None:
    """The directory of the GGUF's dequantized copy in ``dtype``, built on first use (None
    when the cache cannot be written: then the GGUF is dequantized in memory each time)."""
    if not writable():
        return None
    target = gguf_cache_path(info.path, dtype)
    if not complete(target):
        with building(target, f"the dequantized copy of {name}"):
            if not complete(target):  # built by another process while this one waited
                check_memory(
                    f"{name} (dequantized once)", info.parameters, dtype, torch.device("cpu")
                )
                _build_copy(info.path, target, name, dtype)
                bound_copies(keep=target)
    os.utime(target)  # last used: the bound evicts the least recently used copies
    return target


def complete(target: Path) -> bool:
    """Whether a copy is whole: its marker (written last) lists its files with their sizes."""
    try:
        files = json.loads((target / MARKER).read_text())["files"]
        return bool(files) and all((target / n).stat().st_size == s for n, s in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _build_copy(gguf: Path, target: Path, name: str, dtype: torch.dtype) -> None:
    """Dequantize the GGUF and save it under a temporary name, then rename it into place
    (called holding ``target``'s lock: no other process is building it, so any temporary
    directory of it is a killed process's, and goes)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    remove_stale_builds()
    if target.exists():
        shutil.rmtree(target)  # an incomplete copy
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model, tokenizer = dequantize(gguf, name, dtype)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        record = {
            "gguf": str(gguf.resolve()),
            "sha256": file_sha256(gguf),
            "dtype": dtype_name(dtype),
            "transformers": _version("transformers"),
            "gguf_library": _version("gguf"),
            "files": files,
        }
        (tmp / MARKER).write_text(json.dumps(record, indent=2))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the copy from others
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_builds() -> list[Path]:
    """Temporary build directories whose build is not running (a killed process's): removed."""
    removed = []
    for stale in kind_dir(KIND).glob(".gguf-*.tmp-*"):
        target = stale.parent / stale.name[1:].split(".tmp-")[0]
        if stale.is_dir() and not is_busy(target):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def dequantize(
    gguf: Path, name: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Read a GGUF through transformers in ``dtype`` on the CPU, as a plain model (the GGUF
    quantizer only describes how the file was read). Its readers fail in many ways (tokenizers
    raises a bare Exception), so everything but running out of memory becomes one line
    naming the file."""
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise PhasecodeError(
            f"could not read model {name!r} from GGUF file {gguf}: {first_line(exc)}"
        ) from exc
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def bound_copies(keep: Path | None = None) -> list[Path]:
    """Remove the least recently used copies while they hold more than the bound, never
    ``keep`` or one in use by a build."""
    limit = parse_size(os.environ.get(MODELS_MAX_SIZE_ENV) or MODELS_MAX_SIZE)
    copies = [p for p in kind_dir(KIND).glob("gguf-*") if p.is_dir()]
    sizes = {p: tree_size(p) for p in copies}
    total, removed = sum(sizes.values()), []
    for copy in sorted(copies, key=lambda p: p.stat().st_mtime):
        if total <= limit:
            break
        if copy == keep or is_busy(copy):
            continue
        shutil.rmtree(copy, ignore_errors=True)
        total -= sizes[copy]
        removed.append(copy)
    return removed


def check_phasecode_architecture(path: Path, architecture: str) -> None:
    """Refuse, from the header, a GGUF of an architecture phasecode cannot convert (before it
    is dequantized)."""
    if architecture not in PHASECODE_ARCHITECTURES:
        supported = ", ".join(sorted(PHASECODE_ARCHITECTURES))
        raise PhasecodeError(
            f"{path}: GGUF architecture {architecture!r} is not one phasecode converts "
            f"(supported: {supported})"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
