"""One switch for compiling, and a compile cache under phasecode's own cache directory."""

from __future__ import annotations

import os
from pathlib import Path

from phasecode import compile_cache


def _double(x):
    return 2 * x


def test_the_compile_cache_follows_phasecode_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    compile_cache.use_persistent_cache()
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) == tmp_path / "torch-compile"


def test_a_chosen_inductor_cache_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compile_cache.use_persistent_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_phasecode_compile_0_runs_the_function_itself(monkeypatch):
    monkeypatch.setenv("PHASECODE_COMPILE", "0")
    assert not compile_cache.enabled()
    assert compile_cache.compiled(_double) is _double
