"""`phasecode cache ls|du|clear|prune`, the provenance in every key, and the bound on the
dequantized models."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from gguf_files import write_tiny_gguf
from helpers import tiny_llama

from phasecode.cache import provenance as provenance_module
from phasecode.cache.inventory import entries, parse_size
from phasecode.cli import main
from phasecode.errors import PhasecodeError
from phasecode.inference.score_cache import PLAIN, SCORES, perplexity_cached, score_inputs
from phasecode.models import gguf
from phasecode.models.loading import load_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PHASECODE_CACHE", str(root))
    monkeypatch.setenv("PHASECODE_SCORE_CACHE", "1")
    return root


def _windows(seed: int = 0) -> torch.Tensor:
    return torch.randint(2, 250, (2, 16), generator=torch.Generator().manual_seed(seed))


def test_ls_du_clear_and_prune(cache, tmp_path, capsys):
    model = tiny_llama()
    for seed in range(3):
        perplexity_cached(model, _windows(seed), None, 2, False, PLAIN)
        time.sleep(0.01)
    load_model(str(write_tiny_gguf(tmp_path / "t.gguf", tiny_llama())))
    found = entries()
    assert {e.kind for e in found} >= {"window-scores", "models"}
    scores = [e for e in found if e.kind == "window-scores"]
    assert len(scores) == 3 and all("fingerprint" in e.inputs for e in scores)
    assert main(["cache", "ls", "--json", str(tmp_path / "ls.json")]) == 0
    out = capsys.readouterr().out
    assert "window-scores" in out and "t.gguf in float32" in out
    listed = json.loads((tmp_path / "ls.json").read_text())["entries"]
    assert len(listed) == len(found) and listed[0]["inputs"] is not None
    assert main(["cache", "du"]) == 0
    assert "total" in capsys.readouterr().out
    # prune keeps the most recently used: the model copy and the last score
    keep = sum(e.size for e in found if e.kind == "models") + scores[-1].size
    assert main(["cache", "prune", "--max-size", str(keep)]) == 0
    left = entries()
    assert [e.path for e in left if e.kind == "window-scores"] == [scores[-1].path]
    assert main(["cache", "clear", "window-scores"]) == 0
    assert not [e for e in entries() if e.kind == "window-scores"]
    assert [e for e in entries() if e.kind == "models"]  # other kinds untouched
    assert main(["cache", "clear"]) == 0 and entries() == []


def test_bad_cache_commands_are_one_line(cache, capsys):
    assert main(["cache", "ls", "nope"]) == 2
    assert main(["cache", "prune", "--max-size", "lots"]) == 2
    err = capsys.readouterr().err
    assert "unknown cache kind nope" in err and "not a size" in err
    assert err.count("\n") == 2


def test_another_machine_or_library_gets_another_entry(cache, monkeypatch):
    model, windows = tiny_llama(), _windows()
    parts = score_inputs(model, windows, None, 2, PLAIN)
    here = SCORES.path(SCORES.inputs(parts, "cpu"))
    monkeypatch.setattr(
        provenance_module, "device_capability", lambda device=None: {"type": "cpu", "isa": "other"}
    )
    assert SCORES.path(SCORES.inputs(parts, "cpu")) != here
    monkeypatch.undo()
    monkeypatch.setenv("PHASECODE_CACHE", str(cache))
    provenance_module._version.cache_clear()
    monkeypatch.setattr(provenance_module, "_version", lambda name: "0.0-other")
    assert SCORES.path(SCORES.inputs(parts, "cpu")) != here


def test_the_dequantized_copies_are_bounded(cache, tmp_path, monkeypatch):
    """Past the bound the least recently used copy goes, never the one just built."""
    first = write_tiny_gguf(tmp_path / "a.gguf", tiny_llama(0))
    second = write_tiny_gguf(tmp_path / "b.gguf", tiny_llama(1))
    load_model(str(first))
    old = gguf.gguf_cache_path(first)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    monkeypatch.setenv(gguf.MODELS_MAX_SIZE_ENV, "1")  # one byte: only the newest stays
    load_model(str(second))
    assert not old.exists() and gguf.gguf_cache_path(second).is_dir()


def test_parse_size():
    assert parse_size("20G") == 20 << 30 and parse_size("1.5k") == 1536 and parse_size("7") == 7
    with pytest.raises(PhasecodeError):
        parse_size("-1G")
