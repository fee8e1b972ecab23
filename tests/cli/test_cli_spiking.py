"""`phasecode simulate | energy | generate` end to end, in-process, on a tiny saved LLaMA."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from helpers import WORDS, save_tiny_model, write_calibration
from transformers.utils import logging as hf_logging

from phasecode.artifacts import save_artifact
from phasecode.cli import main


@pytest.fixture(scope="module", autouse=True)
def _restore_progress_bars():
    bars = hf_logging.is_progress_bar_enabled()
    yield
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    """A converted tiny LLaMA (T=4) and a text file to run it on."""
    root = tmp_path_factory.mktemp("cli_spiking")
    save_tiny_model(root / "model", tiny_tokenizer)
    calibration = write_calibration(root / "calib.jsonl")
    (root / "text.txt").write_text(" ".join(WORDS * 20) + "\n")
    code, _, err = _run(
        "convert", "--model", root / "model", "--calibration", calibration, "--samples", 32,
        "--sequences", 4, "--seq-len", 32, "-T", 4, "--quiet", "--out", root / "artifact",
    )  # fmt: skip
    assert code == 0, err
    return root


def test_simulate_check_passes_and_writes_json(files):
    report_path = files / "simulate.json"
    code, out, err = _run(
        "simulate", files / "artifact", "--check", "--tokens", 24, "--text", files / "text.txt",
        "--json", report_path, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "PASS" in out
    report = json.loads(report_path.read_text())
    assert report["dtype"] == "float64"
    assert report["check"]["max_relative_difference"] <= 1e-9
    assert report["check"]["argmax_agreement"] == 1.0


def test_simulate_float32_reports_the_rounding_floor(files):
    code, out, err = _run(
        "simulate", files / "artifact", "--check", "--tokens", 16, "--dtype", "float32",
        "--text", files / "text.txt", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "float32 floor" in out


def test_energy_report_shape(files):
    path = files / "energy.json"
    code, out, err = _run(
        "energy", files / "artifact", "--tokens", 24, "--mask", 1, "--windows", 2, "--seq-len",
        16, "--text", files / "text.txt", "--json", path, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(path.read_text())
    for name in ("ann", "snn", "snn_masked"):
        assert {"mac", "ac", "energy_j", "rw_energy_j"} <= report[name].keys()
    assert 0 < report["snn"]["firing_rate"] < 1
    assert report["snn_masked"]["spikes"] < report["snn"]["spikes"]
    assert report["snn_masked"]["ppl_ratio"] > 0
    assert report["ratios"]["total_masked"] < report["ratios"]["total"]
    assert [row["layer"] for row in report["layers"]] == ["layers.0", "layers.1", "head"]
    head = [row for row in report["layers"] if row["layer"] == "head"][0]
    for network in ("snn", "ann"):  # the lm_head is most of the head row's energy
        share = report["lm_head_share"][network]
        whole = head[network]["total_energy_j"] / report[network]["total_energy_j"]
        assert 0.5 * whole < share <= whole
    assert "SNN/ANN energy" in out and "lm_head share" in out


def test_generate_fast_and_spiking_agree(files):
    argv = ["generate", files / "artifact", "--prompt", "the quick brown", "--max-new-tokens", 6,
            "--float64", "--quiet"]  # fmt: skip
    code_fast, fast, err = _run(*argv)
    assert code_fast == 0, err
    code_spiking, spiking, err = _run(*argv, "--spiking")
    assert code_spiking == 0, err
    assert fast.splitlines()[0] == spiking.splitlines()[0]
    assert fast.startswith("the quick brown")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["simulate", "{artifact}", "--tokens", "100000", "--text", "{text}"], "exceeds"),
        (["energy", "{artifact}", "--mask", "-1", "--text", "{text}"], "mask strength"),
        (["generate", "{artifact}", "--prompt", "  "], "prompt is empty"),
        (["simulate", "{neurons}"], "not a converted model"),
        (["energy", "{artifact}", "--costs", "5nm"], "unknown cost preset"),
    ],
)
def test_bad_input_is_one_line(files, argv, needle):
    neurons = files / "neurons"
    save_artifact(neurons, {"x": torch.zeros(1)}, {"kind": "neurons"})
    paths = {"artifact": files / "artifact", "text": files / "text.txt", "neurons": neurons}
    code, _, err = _run(*[a.format(**paths) for a in argv], "--quiet")
    assert code == 2, err
    assert err.startswith("phasecode: error: ") and needle in err and len(err.splitlines()) == 1
