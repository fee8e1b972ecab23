"""Bad input on every command: one line on stderr, exit code 2, no traceback, no file of the
user's changed — and found before any model loads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from helpers import cli_files, progress_bars_off

from phasecode.cli import main

CONVERT = ["--samples", "64", "--sequences", "4", "--seq-len", "32", "-T", "4", "--quiet"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny model, calibration text, a converted artifact, and user files to protect."""
    root = cli_files(tmp_path_factory.mktemp("bad_input"), tiny_tokenizer)
    model, calib = root / "model", root / "calib.jsonl"
    with progress_bars_off():
        argv = ["convert", "--model", str(model), "--calibration", str(calib), *CONVERT]
        assert main([*argv, "--prefix-ids", "0", "--out", str(root / "artifact")]) == 0
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("a user's file\n")
    (root / "empty").mkdir()
    (root / "garbage.gguf").write_bytes(b"not a gguf file at all" * 10)
    (root / "negative.json").write_text(json.dumps(_costs(mac_pj=-1.0)))
    (root / "zero_bits.json").write_text(json.dumps(_costs(word_bits=0)))
    (root / "list.json").write_text("[1, 2]")
    (root / "theirs").mkdir()
    (root / "theirs" / "report.md").write_text("a user's report\n")
    (root / "theirs" / "table.md").write_text("a user's table\n")
    (root / "other-energy.json").write_text(json.dumps({"artifact": "/elsewhere/x"}))
    (root / "recipe.txt").write_text("timesteps: 8\n")
    return root


def _costs(**change) -> dict:
    return {"mac_pj": 4.6, "ac_pj": 0.9, "read_pj": 5.0, "write_pj": 5.0, "word_bits": 32} | change


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under root with its content's digest (directories: '-')."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "-"
        for p in sorted(root.rglob("*"))
    }


def _convert(*extra: str) -> list[str]:
    return ["convert", "--model", "{root}/model", "--calibration", "{root}/calib.jsonl", *extra]


CASES = [
    # convert: arguments, prefixes, devices, output directories, model paths
    (_convert("--lr-threshold", "nan", "--out", "{root}/new"), ["--lr-threshold"]),
    (_convert("--prefix", "", "--out", "{root}/new"), ["--prefix", "non-empty"]),
    (_convert("--prefix-ids", "a,b", "--out", "{root}/new"), ["--prefix-ids"]),
    (_convert("--prefix-ids", "-1", "--out", "{root}/new"), ["--prefix-ids"]),
    (_convert("--samples", "8", "--out", "{root}/new"), ["--samples"]),
    (_convert("--out", "{root}/calib.jsonl"), ["calib.jsonl", "file"]),
    (_convert("--out", "{root}/mine"), ["not empty"]),
    (_convert("--out", "{root}/artifact"), ["--force"]),
    (_convert("--out", "{root}/calib.jsonl/sub"), ["calib.jsonl"]),
    (_convert("--out", "/proc/phasecode-out"), ["/proc/phasecode-out"]),
    (["convert", "--model", "{root}/artifact", "--out", "{root}/new"], ["phasecode artifact"]),
    (["convert", "--model", "{root}/empty", "--out", "{root}/new"], ["empty"]),
    (["convert", "--model", "{root}/garbage.gguf", "--out", "{root}/new"], ["garbage.gguf"]),
    (["convert", "--model", "{root}/nowhere/x", "--out", "{root}/new"], ["not found"]),
    (_convert("--energy-budget", "-1", "--out", "{root}/new"), ["energy budget", "> 0"]),
    (_convert("--energy-budget", ".8", "--min-timesteps", "0", "--out", "{root}/n"), ["--min-t"]),
    (
        _convert(
            "--energy-budget",
            ".8",
            "--budget-mode",
            "knapsack",
            "--budget-sensitivity",
            "measured",
            "--out",
            "{root}/n",
        ),
        ["measured", "price"],
    ),
    (
        _convert("--energy-budget", ".8", "--costs", "{root}/list.json", "--out", "{root}/n"),
        ["list"],
    ),
    (_convert("--code", "signed-digit", "--method", "las", "--out", "{root}/new"), ["mgpc"]),
    (_convert("--objective", "fisher", "--method", "rate", "--out", "{root}/new"), ["mgpc"]),
    (_convert("--probs-bias", "-1", "--out", "{root}/new"), ["--probs-bias"]),
    (_convert("--batch-samples", "0", "--out", "{root}/new"), ["--batch-samples"]),
    (["neurons", "--model", "{root}/model", "--objective", "fisher"], ["phasecode convert"]),
    (["neurons", "--model", "{root}/model", "--probs-bias", "auto"], ["phasecode convert"]),
    (_convert("--probs-bias", "auto", "--method", "las", "--out", "{root}/new"), ["mgpc"]),
    # pareto
    (["pareto", "--budgets", "0.8,x", "--out", "{root}/new"], ["--budgets"]),
    (["pareto", "--budgets", "0", "--out", "{root}/new"], ["energy budget"]),
    (["pareto", "--knapsack-budgets", "0.8,y", "--out", "{root}/new"], ["--knapsack-budgets"]),
    (["pareto", "--masks", "8", "--out", "{root}/new"], ["--masks"]),
    (["pareto", "--unbiased-probs", "6,x", "--out", "{root}/new"], ["--unbiased-probs"]),
    (["pareto", "--uniform", "8,99", "--out", "{root}/new"], ["timesteps"]),
    (["pareto", "--model", "{root}/model", "--out", "{root}/calib.jsonl"], ["calib.jsonl"]),
    # neurons
    (["neurons", "--model", "{root}/model", "--out", "{root}/mine"], ["not empty"]),
    (["neurons", "--model", "{root}/model", "--json", "{root}/mine"], ["directory"]),
    # run
    (["run", "--limit", "0"], ["--limit"]),
    (["run", "--out", "{root}/mine"], ["not empty"]),
    (["run", "--model", "{root}/nowhere/x", "--out", "{root}/new"], ["not found"]),
    (["run", "--model", "{root}/model", "--out", "{root}/artifact"], ["--force"]),
    # eval
    (["eval", "{root}/artifact", "--json", "{root}/mine"], ["directory"]),
    (["eval", "{root}/artifact", "--batch-size", "0"], ["--batch-size"]),
    (["eval", "{root}/artifact", "--seq-len", "1"], ["--seq-len"]),
    (["eval", "{root}/mine"], ["mine"]),
    (["eval", "{root}/artifact", "--text", "{root}/missing.txt"], ["missing.txt"]),
    # energy: cost files
    (["energy", "{root}/artifact", "--costs", "{root}/negative.json"], ["mac_pj", ">= 0"]),
    (["energy", "{root}/artifact", "--costs", "{root}/zero_bits.json"], ["word_bits"]),
    (["energy", "{root}/artifact", "--costs", "{root}/missing.json"], ["cost file not found"]),
    (["energy", "{root}/artifact", "--costs", "{root}/list.json"], ["list.json"]),
    (["energy", "{root}/artifact", "--tokens", "0"], ["--tokens"]),
    # generate, simulate, report
    (["generate", "{root}/artifact", "--prompt", "  "], ["prompt"]),
    (["generate", "{root}/artifact", "--prompt", "hi", "--mask", "9"], ["mask"]),
    (["simulate", "{root}/artifact", "--json", "{root}/mine"], ["directory"]),
    (["report", "{root}/artifact", "--energy", "{root}/missing.json"], ["missing.json"]),
    (["report", "{root}/artifact", "--out", "{root}/calib.jsonl"], ["calib.jsonl"]),
    (["report", "{root}/artifact", "--out", "{root}/theirs"], ["report.md", "did not write"]),
    (["report", "{root}/artifact", "--energy", "{root}/other-energy.json"], ["another artifact"]),
    (["compare", "--out", "{root}/theirs"], ["table.md", "did not write"]),
    # an artifact whose base model moved: --base-model names it, and must be a model
    (["eval", "{root}/artifact", "--base-model", "{root}/nowhere"], ["nowhere", "not found"]),
    (_convert("--config", "{root}/recipe.txt", "--out", "{root}/new"), [".yaml"]),
    (_convert("--config", "{root}/missing.yaml", "--out", "{root}/new"), ["not found"]),
    (["generate", "{root}/artifact", "--prompt", "x" * 150], ["positions", "--max-new-tokens"]),
    # the cache
    (["cache", "ls", "nope"], ["unknown cache kind"]),
    (["cache", "prune", "--max-size", "x"], ["not a size"]),
]
if not torch.cuda.is_available():
    CASES.append((_convert("--device", "cuda", "--out", "{root}/new"), ["no CUDA GPU"]))


@pytest.mark.parametrize(
    ("argv", "needles"), CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CASES]
)
def test_bad_input_is_one_line_before_any_model_loads(
    world, argv, needles, capsys, monkeypatch, tmp_path
):
    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    for target in (
        "phasecode.models.loading.load_model",
        "phasecode.conversion.store.load_model",
        "phasecode.api.model.load_base",
    ):
        monkeypatch.setattr(target, never)
    monkeypatch.chdir(tmp_path)  # `run`'s default output would land here
    before = _snapshot(world)
    code = main([arg.replace("{root}", str(world)) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("phasecode: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert _snapshot(world) == before
    assert not list(tmp_path.iterdir())


def test_a_second_writer_of_one_out_and_a_full_disk_are_refused(world, capsys, monkeypatch):
    """Another process writing the same --out (its lock held here), and a file system with no
    room for the artifact: one line each, before any model loads."""
    import shutil
    from collections import namedtuple

    from phasecode.outputs import exclusive_output

    out = world / "contested"
    argv = _convert("--out", str(out))
    argv = [a.replace("{root}", str(world)) for a in argv] + CONVERT
    with exclusive_output(out):
        assert main(argv) == 2
    assert "another phasecode process is writing" in capsys.readouterr().err
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1 << 20))
    assert main(argv) == 2
    assert "MiB free" in capsys.readouterr().err
    assert not out.exists()


def test_a_cache_root_that_is_a_file_is_one_line(world, capsys, monkeypatch, tmp_path):
    (tmp_path / "cache").write_text("not a directory")
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path / "cache"))
    assert main(["cache", "du"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a directory" in err[0]
