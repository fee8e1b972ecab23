"""One switch for compiling, and a compile cache under phasecode's own cache directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from phasecode.cache import kernels


def _double(x):
    return 2 * x


def test_the_compile_cache_follows_phasecode_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    kernels.use_persistent_cache()
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) == tmp_path / "torch-compile"


def test_a_chosen_inductor_cache_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    kernels.use_persistent_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_phasecode_compile_0_runs_the_function_itself(monkeypatch):
    monkeypatch.setenv("PHASECODE_COMPILE", "0")
    assert not kernels.enabled()
    assert kernels.compiled(_double) is _double


def _affine(x, scale, steps: int):
    for _ in range(steps):
        x = x * scale + 1
    return x


def _no_compiling(*args, **kwargs):
    raise AssertionError("compiled again instead of loading the saved kernel")


def test_a_saved_kernel_is_loaded_by_a_new_process_without_compiling(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path))
    monkeypatch.delenv("PHASECODE_COMPILE", raising=False)
    x, scale = torch.randn(5, 3), torch.tensor(0.5)
    first, fallbacks = (
        kernels.Precompiled(_affine, dynamic=True),
        kernels.Precompiled.fallbacks,
    )
    assert torch.equal(first(x, scale, 3), _affine(x, scale, 3))
    (saved,) = (tmp_path / "torch-compile" / "aot").glob("*.bin")
    assert saved.name.startswith(f"{__name__}._affine-")
    monkeypatch.setattr(torch, "compile", _no_compiling)  # a fresh process: load only
    second = kernels.Precompiled(_affine, dynamic=True)
    other = torch.randn(7, 3)  # another size: the same dynamic kernel
    assert torch.equal(second(other, scale, 3), _affine(other, scale, 3))
    assert kernels.Precompiled.fallbacks == fallbacks


def test_a_torn_kernel_file_is_compiled_again(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path))
    kernel = kernels.Precompiled(_affine, dynamic=True)
    x, scale = torch.randn(4, 3), torch.tensor(2.0)
    path = kernel.path(kernels.signature((x, scale, 2), True), (x, scale, 2))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a kernel")
    assert torch.equal(kernel(x, scale, 2), _affine(x, scale, 2))
    assert path.stat().st_size > len(b"half a kernel")


def test_a_cpu_kernel_is_kept_per_thread_count(monkeypatch, tmp_path):
    """Inductor writes a CPU kernel for the thread count it compiled under: a kernel compiled
    by a one-thread process must not be what a two-thread process loads."""
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path))
    kernel = kernels.Precompiled(_affine, dynamic=True)
    args = (torch.randn(4, 3), torch.tensor(2.0), 2)
    key = kernels.signature(args, True)
    threads = torch.get_num_threads()
    try:
        paths = set()
        for count in (1, 2):
            torch.set_num_threads(count)
            paths.add(kernel.path(key, args))
            assert torch.equal(kernel(*args), _affine(*args))
        assert len(paths) == 2
        assert sorted(p.name for p in (tmp_path / "torch-compile" / "aot").glob("*.bin")) == sorted(
            p.name for p in paths
        )
    finally:
        torch.set_num_threads(threads)


def test_a_refused_call_falls_back_to_torch_compile(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path))
    kernel = kernels.Precompiled(_affine, dynamic=True)
    x, scale = torch.randn(4, 3), torch.tensor(2.0)

    def refusing(*args):
        raise RuntimeError(f"{kernels.GUARD_FAILURE}, reason: a guard")

    monkeypatch.setattr(kernel, "_load_or_compile", lambda key, args: refusing)
    before = kernels.Precompiled.fallbacks
    assert torch.equal(kernel(x, scale, 2), _affine(x, scale, 2))
    assert kernels.Precompiled.fallbacks == before + 1


def test_the_signature_keeps_what_a_kernel_specializes_on():
    x = torch.randn(4, 6)
    cpu = torch.device("cpu")
    assert kernels.signature((x, 3, None), all_dynamic=True) == (
        (torch.float32, cpu, ("n", "n"), True, False),
        3,
        None,
    )
    assert kernels.signature((x,))[0][2] == (4, 6)  # no dim marked: all sizes exact
    marked = kernels.mark_dynamic(torch.randn(4, 6), 0)
    assert kernels.signature((marked,))[0][2] == ("n", 6)
    assert kernels.signature((kernels.mark_dynamic(x[:1], 0),))[0][2] == (1, 6)
    assert kernels.signature((_affine,)) == (f"{__name__}._affine",)
    assert kernels.signature((x.double(),))[0][0] == torch.float64
    assert kernels.signature((x.t(),))[0][3] is False  # not contiguous
    unmarked = kernels.unmarked((marked, 2))
    assert not hasattr(unmarked[0], "_has_dynamo_dim_marking") and torch.equal(unmarked[0], marked)


def test_a_tuple_passed_again_keeps_its_signature_and_a_new_one_gets_its_own():
    neuron = (torch.randn(8), 8, False)
    first = kernels.signature((neuron,))
    assert kernels.signature((neuron,)) == first
    other = (torch.randn(8, dtype=torch.float64), 8, False)
    assert kernels.signature((other,)) != first
