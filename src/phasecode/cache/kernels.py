"""torch.compile for phasecode's kernels: one switch and one persistent cache.

PHASECODE_COMPILE=0 runs every kernel eagerly (the same Python code). Otherwise each kernel is
compiled with dynamic shapes, so new batch and sequence sizes reuse its graph, and saved whole
per call signature (``Precompiled``), so a second process neither traces nor generates code;
inductor's own caches live under phasecode's cache directory too. A saved kernel is keyed by
the provenance record (``provenance``: phasecode's source, torch, Python, the device and its
capability), so a kernel compiled on another node of a shared $HOME is never loaded here, and
on the CPU by torch's intra-op thread count: inductor writes a CPU kernel for the threads it
was compiled under (no OpenMP at all under one), so a kernel compiled by a one-thread process
would run serially in every later process.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from phasecode.cache.locks import building
from phasecode.cache.provenance import provenance
from phasecode.cache.root import kind_dir, writable

KIND = "torch-compile"


def enabled() -> bool:
    """Whether kernels are compiled (PHASECODE_COMPILE is not "0")."""
    return os.environ.get("PHASECODE_COMPILE", "1") != "0"


def compile_dir() -> Path:
    """$PHASECODE_CACHE/torch-compile."""
    return kind_dir(KIND)


def use_persistent_cache() -> None:
    """Point inductor's caches at ``compile_dir`` unless TORCHINDUCTOR_CACHE_DIR is set (or
    the cache cannot be written: inductor then keeps its own default).

    Inductor reads that variable when it first needs its cache, so this must run before the
    process compiles anything; ``compiled`` calls it."""
    if writable():
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_dir()))


_COMPILED: dict[Callable, Callable] = {}
# graphs one kernel may keep: each neuron shape (T, binary or signed, masking, a site without
# a neuron) is its own graph, and a sweep (pareto, compare) meets many in one process; past
# dynamo's default of 8 the kernel would silently fall back to eager for every new one
RECOMPILE_LIMIT = 64
GUARD_FAILURE = "GuardManager check failed"


def compiled(fn: Callable, dynamic: bool | None = True) -> Callable:
    """``fn`` compiled ahead of time per call signature (``Precompiled``), or ``fn`` itself
    when compiling is off.

    ``dynamic=True``: every size is symbolic from the first call. ``None``: only the dims the
    caller marks (``mark_dynamic``) are, the rest is specialized, which makes tracing cheaper
    for kernels with many fixed dims (heads, head size).
    """
    if not enabled():
        return fn
    if fn not in _COMPILED:
        use_persistent_cache()
        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        _COMPILED[fn] = Precompiled(fn, dynamic)
    return _COMPILED[fn]


class Precompiled:
    """A kernel whose compiled form is saved whole, so that a new process loads it instead of
    tracing it again.

    torch.compile's own caches keep the generated code across processes, but every process
    still traces each function (bytecode and fake tensors: ~4-6 s for the fast path's four
    kernels on two CPU cores, more than the cached code takes to load). Here each call
    signature (``signature``: dtypes, devices, the sizes that are not dynamic, the values of
    non-tensor arguments, the functions passed) is compiled once by ``aot_compile`` and saved
    as ``compile_dir()/aot/<kernel>-<digest>.bin``, the digest also covering phasecode's
    source and torch's version; a later process loads it (~20 ms, the first ~1 s). Should a
    loaded kernel's guards still refuse a call, or a kernel not compile as one graph, that
    signature falls back to ordinary ``torch.compile`` (counted in ``fallbacks``).
    """

    fallbacks = 0

    def __init__(self, fn: Callable, dynamic: bool | None):
        self.fn, self.dynamic = fn, dynamic
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self._kernels: dict[tuple, Callable] = {}
        self._jit: Callable | None = None

    def __call__(self, *args):
        call = signature(args, self.dynamic is True)
        key = (call, torch.get_num_threads())  # the thread count: see the module's docstring
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = self._kernels[key] = self._load_or_compile(call, args)
        try:
            return kernel(*unmarked(args))
        except RuntimeError as error:  # guards run before any work: nothing was done twice
            if GUARD_FAILURE not in str(error):
                raise
            self._kernels[key] = self._fallback()
            return self._kernels[key](*args)

    def path(self, key: tuple, args: tuple) -> Path:
        device = next((a.device for a in _tensors(args)), None)
        record = provenance(device)
        if device is None or device.type == "cpu":  # see the module's docstring
            record["threads"] = torch.get_num_threads()
        digest = hashlib.sha256(f"{key!r}|{sorted(record.items())!r}".encode())
        return compile_dir() / "aot" / f"{self.name}-{digest.hexdigest()[:24]}.bin"

    def _load_or_compile(self, key: tuple, args: tuple) -> Callable:
        path = self.path(key, args)
        kernel = _load(path)
        if kernel is not None:
            return kernel
        with building(path, f"kernel {self.name}"):
            kernel = _load(path)  # compiled by another process while this one waited
            return kernel if kernel is not None else self._compile(path, args)

    def _compile(self, path: Path, args: tuple) -> Callable:
        try:
            with warnings.catch_warnings():  # dynamo's guard builder reads views' .grad
                warnings.filterwarnings("ignore", ".*grad attribute of a Tensor that is not a leaf")
                kernel = torch.compile(self.fn, fullgraph=True, dynamic=self.dynamic).aot_compile(
                    (args, {})
                )
        except Exception:  # noqa: BLE001 - not one graph: torch.compile handles it
            return self._fallback()
        _save(kernel, path)
        return kernel

    def _fallback(self) -> Callable:
        Precompiled.fallbacks += 1
        if self._jit is None:
            self._jit = torch.compile(self.fn, dynamic=self.dynamic)
        return self._jit


def _load(path: Path) -> Callable | None:
    """The saved kernel, or None (none yet; a stale or torn file is removed)."""
    try:
        with path.open("rb") as handle:
            return torch.compiler.load_compiled_function(handle)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a stale or torn file: compile and replace it
        path.unlink(missing_ok=True)
        return None


def _tensors(value):
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _tensors(item)


def _save(kernel, path: Path) -> None:
    """Write through a temporary file and a rename; an unwritable cache only costs time."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        kernel.save_compiled_function(str(tmp))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def unmarked(value):
    """The arguments with each dynamic-marked tensor as a fresh view without the marks: a
    loaded kernel's guards refuse the marks (its dynamic dims are part of the kernel)."""
    if isinstance(value, Tensor) and hasattr(value, "_has_dynamo_dim_marking"):
        return value.as_strided(value.shape, value.stride(), value.storage_offset())
    if isinstance(value, tuple):
        return tuple(unmarked(v) for v in value)
    return value


# A call's tuples are mostly the same objects every time (a neuron's fused arguments), so their
# signatures are remembered by identity: an entry keeps weak references to the tuple's tensors
# (not the tensors: a sweep's discarded neurons are freed, GPU memory included) and is valid
# while the same tuple holds the same live tensors. A tensor in one that changed dtype or size
# since would only fail the kernel's guards, and the call then runs through torch.compile
# (``Precompiled.__call__``).
TUPLE_MEMORY = 1024
_TUPLE_SIGNATURES: dict[tuple[int, bool], tuple[tuple, tuple]] = {}


def signature(value, all_dynamic: bool = False) -> tuple | str | int | float | bool | None:
    """What a compiled kernel specializes on, for a call's arguments (hashable, cheap: it is
    taken on every call): per tensor its dtype, device, contiguity, whether it needs a
    gradient, and its sizes, a dynamic dim only as 0, 1 or more ("n": dynamo specializes 0 and
    1); the values of other arguments; a function's qualified name."""
    if isinstance(value, Tensor):
        marks = value.__dict__
        marked = marks.get("_dynamo_weak_dynamic_indices", ()) if marks else ()
        sizes = tuple(
            size if size <= 1 or not (all_dynamic or dim in marked) else "n"
            for dim, size in enumerate(value.shape)
        )
        return (value.dtype, value.device, sizes, value.is_contiguous(), value.requires_grad)
    if isinstance(value, tuple):
        remembered = _TUPLE_SIGNATURES.get((id(value), all_dynamic))
        if remembered is not None and _same_leaves(value, remembered[0]):
            return remembered[1]
        key = tuple(signature(v, all_dynamic) for v in value)
        if len(_TUPLE_SIGNATURES) >= TUPLE_MEMORY:
            _TUPLE_SIGNATURES.clear()
        leaves = tuple(weakref.ref(v) if isinstance(v, Tensor) else v for v in _leaves(value))
        _TUPLE_SIGNATURES[(id(value), all_dynamic)] = (leaves, key)
        return key
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', value)}"
    return value


def _leaves(value: tuple):
    for item in value:
        if isinstance(item, tuple):
            yield from _leaves(item)
        else:
            yield item


def _same_leaves(value: tuple, remembered: tuple) -> bool:
    """Whether ``value`` is the tuple an entry was made for: the same live tensors (a new
    tuple at a freed one's address fails this) and the same other values, leaf by leaf."""
    leaves = list(_leaves(value))
    if len(leaves) != len(remembered):
        return False
    for leaf, kept in zip(leaves, remembered, strict=True):
        if isinstance(leaf, Tensor):
            if not isinstance(kept, weakref.ref) or kept() is not leaf:
                return False
        elif isinstance(kept, weakref.ref) or kept != leaf:
            return False
    return True


def mark_dynamic(tensor: Tensor, *dims: int) -> Tensor:
    """Mark ``dims`` of ``tensor`` as dynamic for a ``compiled(fn, dynamic=None)`` kernel (a
    dim of size 0 or 1 stays specialized instead of failing)."""
    for dim in dims:
        torch._dynamo.maybe_mark_dynamic(tensor, dim)
    return tensor
