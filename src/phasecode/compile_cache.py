"""torch.compile for phasecode's kernels: one switch and one persistent cache.

PHASECODE_COMPILE=0 runs every kernel eagerly (the same Python code). Otherwise each kernel is
compiled once per process with dynamic shapes, so new batch and sequence sizes reuse its graph,
and inductor's on-disk caches (compiled FX graphs, AOT-autograd graphs, the dynamic-shape
profiles) live under phasecode's cache directory, so a second process skips code generation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor


def enabled() -> bool:
    """Whether kernels are compiled (PHASECODE_COMPILE is not "0")."""
    return os.environ.get("PHASECODE_COMPILE", "1") != "0"


def compile_dir() -> Path:
    """$PHASECODE_CACHE/torch-compile (the same root as ``models.loading.cache_dir``)."""
    root = os.environ.get("PHASECODE_CACHE") or "~/.cache/phasecode"
    return Path(root).expanduser() / "torch-compile"


def use_persistent_cache() -> None:
    """Point inductor's caches at ``compile_dir`` unless TORCHINDUCTOR_CACHE_DIR is set.

    Inductor reads that variable when it first needs its cache, so this must run before the
    process compiles anything; ``compiled`` calls it."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_dir()))


_COMPILED: dict[Callable, Callable] = {}
# graphs one kernel may keep: each neuron shape (T, binary or signed, masking, a site without
# a neuron) is its own graph, and a sweep (pareto, compare) meets many in one process; past
# dynamo's default of 8 the kernel would silently fall back to eager for every new one
RECOMPILE_LIMIT = 64


def compiled(fn: Callable, dynamic: bool | None = True) -> Callable:
    """``fn`` compiled (once per process), or ``fn`` itself when compiling is off.

    ``dynamic=True``: every size and int argument is symbolic from the first call. ``None``:
    only the dims the caller marks (``mark_dynamic``) are, the rest is specialized, which makes
    tracing, and so a warm start, cheaper for kernels with many fixed dims (heads, head size).
    """
    if not enabled():
        return fn
    if fn not in _COMPILED:
        use_persistent_cache()
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        _COMPILED[fn] = torch.compile(fn, dynamic=dynamic)
    return _COMPILED[fn]


def mark_dynamic(tensor: Tensor, *dims: int) -> Tensor:
    """Mark ``dims`` of ``tensor`` as dynamic for a ``compiled(fn, dynamic=None)`` kernel (a
    dim of size 0 or 1 stays specialized instead of failing)."""
    for dim in dims:
        torch._dynamo.maybe_mark_dynamic(tensor, dim)
    return tensor
