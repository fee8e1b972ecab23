"""What every cache key holds besides the entry's own inputs: the code it depends on and the
software and hardware that produced it, so an entry made by other code, another library
version or another machine (a shared $HOME across unlike nodes) is never used."""

from __future__ import annotations

import hashlib
import platform
from functools import cache
from importlib import metadata
from pathlib import Path

import torch

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def provenance(device: torch.device | str | None = None, code: tuple[str, ...] = ()) -> dict:
    """The record: Python, torch, transformers and lm-eval versions, the device and its
    capability, and the digest of phasecode's source files under ``code`` (package-relative
    paths; empty: the whole package)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "lm_eval": _version("lm-eval"),
        "device": device_capability(device),
        "code": source_digest(*code),
    }


def device_capability(device: torch.device | str | None = None) -> dict:
    """A GPU's name, compute capability and CUDA/Triton versions; for the CPU, its
    architecture and the instruction set torch's kernels use (AVX2, AVX512, ...)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return {
            "type": "cuda",
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "triton": _version("triton"),
        }
    return {
        "type": device.type,
        "machine": platform.machine(),
        "isa": torch.backends.cpu.get_cpu_capability(),
    }


@cache
def source_digest(*parts: str) -> str:
    """sha256 of phasecode's source files under ``parts`` (files or folders relative to the
    package; none: all of it), their names included."""
    digest = hashlib.sha256()
    roots = [PACKAGE_ROOT / part for part in parts] or [PACKAGE_ROOT]
    files = sorted({p for r in roots for p in ([r] if r.is_file() else r.rglob("*.py"))})
    for path in files:
        digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@cache
def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
