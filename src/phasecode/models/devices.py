"""Devices, dtypes and a memory pre-check, so a bad --device/--dtype fails before any loading."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from phasecode.errors import PhasecodeError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

DEVICE_MAPS = ("auto",)  # passed through to transformers/accelerate; None means "all on `device`"

_GIB = 1024**3
_CUDA = re.compile(r"^cuda(?::(\d+))?$")
_MEMINFO = Path("/proc/meminfo")


def resolve_device(spec: str) -> torch.device:
    """Turn a --device string into a torch.device, refusing devices that are not there.

    "auto" picks the current CUDA GPU when one is visible, else the CPU. "cuda" without an index
    means the current GPU, returned with its index so messages can name it. "meta" is allowed for
    tests (weights are not materialised).
    """
    spec = spec.strip().lower()
    if spec == "auto":
        return _cuda(None) if torch.cuda.is_available() else torch.device("cpu")
    if spec in ("cpu", "meta"):
        return torch.device(spec)
    match = _CUDA.match(spec)
    if match is None:
        raise PhasecodeError(
            f"--device {spec!r} is not a device: use auto, cpu, cuda, cuda:N or meta"
        )
    index = int(match.group(1)) if match.group(1) is not None else None
    if not torch.cuda.is_available():
        raise PhasecodeError(
            f"--device {spec}: no CUDA GPU is visible (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}); use --device cpu or auto"
        )
    return _cuda(index)


def _cuda(index: int | None) -> torch.device:
    """A CUDA device with an explicit index, checked against the visible GPUs."""
    count = torch.cuda.device_count()
    if index is None:
        index = torch.cuda.current_device()
    if not 0 <= index < count:
        visible = f"cuda:0..cuda:{count - 1}" if count > 1 else "cuda:0"
        raise PhasecodeError(
            f"--device cuda:{index}: only {count} CUDA GPU(s) are visible ({visible})"
        )
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Turn a --dtype string into a torch.dtype that works on `device`."""
    dtype = DTYPES.get(name.strip().lower())
    if dtype is None:
        raise PhasecodeError(f"--dtype {name!r} is not supported: use {', '.join(DTYPES)}")
    check_dtype(dtype, device)
    return dtype


def check_dtype(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a dtype the device cannot compute in, before minutes are spent loading.

    float16 is accepted on the CPU: torch 2.13's CPU kernels cover nn.Linear, matmul, softmax,
    SDPA, SiLU and embeddings in float16 (slower than float32, like bfloat16).
    """
    if dtype not in DTYPES.values():
        raise PhasecodeError(f"dtype {dtype} is not supported: use {', '.join(DTYPES)}")
    if device.type == "cuda" and dtype == torch.bfloat16:
        with torch.cuda.device(device):
            supported = torch.cuda.is_bf16_supported()
        if not supported:
            raise PhasecodeError(
                f"--dtype bfloat16: {device} ({torch.cuda.get_device_name(device)}) does not "
                f"support bfloat16; use --dtype float16 or float32"
            )


def check_device_map(device_map: str | None) -> None:
    """Only "auto" (or None) is passed through to transformers."""
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise PhasecodeError(f"--device-map {device_map!r} is not supported: use auto or omit it")


def parameter_count(config: Any) -> int:
    """Parameters of a supported causal LM from its config alone (for the memory check).

    Counts the embedding, per layer q/k/v/o (with grouped-query K/V heads and their biases where
    the architecture has them; fused or not, the same), gate/up/down and two RMSNorms, the
    final norm, and lm_head unless it is tied to the embedding. Gemma 3's two extra norms and
    the q/k norms of Qwen3, Gemma 3 and OLMo 2 are left out: a few vectors per layer.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    inter = config.intermediate_size
    vocab = config.vocab_size
    attn_bias = bool(getattr(config, "attention_bias", False))
    qkv_bias = attn_bias or config.model_type == "qwen2"
    mlp_bias = bool(getattr(config, "mlp_bias", False))

    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * (q + 2 * kv) + q * hidden
    attention += (q + 2 * kv) * qkv_bias + hidden * attn_bias
    mlp = 3 * hidden * inter + (2 * inter + hidden) * mlp_bias
    layer = attention + mlp + 2 * hidden
    lm_head = 0 if getattr(config, "tie_word_embeddings", False) else vocab * hidden
    return vocab * hidden + config.num_hidden_layers * layer + hidden + lm_head


def available_bytes(device: torch.device) -> int | None:
    """Memory free for weights on `device`, or None where it cannot be known (meta, no meminfo)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            lines = _MEMINFO.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def dtype_name(dtype: torch.dtype) -> str:
    """ "bfloat16" rather than "torch.bfloat16", for messages."""
    return str(dtype).removeprefix("torch.")


def check_memory(
    label: str,
    parameters: int,
    dtype: torch.dtype,
    device: torch.device,
    device_map: str | None = None,
) -> int:
    """Raise if the weights alone cannot fit on `device`; returns the estimated weight bytes.

    Only the weights are counted, so passing is necessary, not sufficient. With
    device_map="auto" accelerate spreads the model over GPUs/CPU, so nothing is refused.
    """
    need = parameters * dtype.itemsize
    if device_map == "auto":
        return need
    have = available_bytes(device)
    if have is not None and need > have:
        if device.type == "cuda":
            where, hint = f"{device} has", "use --device-map auto or a smaller dtype"
        else:
            where = f"{device.type} has"
            hint = "use a smaller dtype or a machine with more RAM"
        raise PhasecodeError(
            f"model {label} needs ~{_gib(need)} GiB for its weights in {dtype_name(dtype)}, "
            f"but {where} {_gib(have)} GiB free; {hint}"
        )
    return need


def _gib(size: int) -> str:
    """Bytes as GiB with three significant digits (0.000244 for a tiny test model)."""
    return f"{size / _GIB:.3g}"
