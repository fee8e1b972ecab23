"""Every method as a full conversion through `phasecode convert` + `eval` (same sites, same
outlier handling, same evaluation), and the --mode / --weight-bits options."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import cli_files, progress_bars_off

from phasecode.artifacts import load_artifact
from phasecode.cli import main
from phasecode.conversion.store import read_spiking_metadata

SITES = 10 * 2 + 1  # ten per decoder layer and the lm_head input


@pytest.fixture(scope="module", autouse=True)
def _quiet_transformers():
    with progress_bars_off():
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    return cli_files(tmp_path_factory.mktemp("cli_methods"), tiny_tokenizer)


def _convert(files, out, *options: str) -> int:
    argv = ["--quiet", "convert", "--model", str(files / "model")]
    argv += ["--calibration", str(files / "calib.jsonl"), "--samples", "32", "--sequences", "4"]
    argv += ["--seq-len", "32", "--rounds", "2", "--out", str(out), *options]
    return main(argv)


def _evaluate(files, artifact, report) -> dict:
    argv = ["--quiet", "eval", str(artifact), "--ppl", "", "--text", str(files / "eval.txt")]
    assert main([*argv, "--seq-len", "32", "--limit", "2", "--json", str(report)]) == 0
    return json.loads(report.read_text())["ppl"][str(files / "eval.txt")]


@pytest.mark.parametrize(
    ("method", "timesteps", "budget"),
    [
        ("las", 6, 0),
        ("spikedattention", 6, 2),  # relaxed from one spike to two (App. D.1)
        ("ttfs", 128, 1),  # TTFSFormer at its own T (App. D.1)
        ("rate", 6, 0),
        ("phase", 6, 0),
        ("mgpc", 6, 0),
    ],
)
def test_every_method_converts_and_evaluates(files, tmp_path, method, timesteps, budget):
    out = tmp_path / method
    assert _convert(files, out, "--method", method, "-T", str(timesteps), "--grains", "1") == 0
    spec = read_spiking_metadata(out)["spec"]
    assert (spec["method"], spec["timesteps"], spec["rotate"]) == (method, timesteps, True)
    assert spec["prefix_tokens"][0] == 0 and spec["lm_head"]  # BOS prefix, all sites coded
    tensors, _ = load_artifact(out)
    assert tensors["threshold"].shape == (SITES, timesteps)
    assert tensors["max_spikes"].tolist() == [budget] * SITES
    row = _evaluate(files, out, tmp_path / f"{method}.json")
    assert math.isfinite(row["snn"]) and row["snn"] != row["ann_prefixed"]


def test_mode_reaches_the_training(files, tmp_path):
    assert _convert(files, tmp_path / "joint", "-T", "4", "--mode", "joint") == 0
    assert set(read_spiking_metadata(tmp_path / "joint")["loss_phases"]) == {"joint"}
    assert _convert(files, tmp_path / "coupled", "-T", "4", "--mode", "coupled") == 0
    tensors, metadata = load_artifact(tmp_path / "coupled")
    assert torch.equal(tensors["threshold"], tensors["reset"])  # h = θ (Table 7)
    assert set(metadata["loss_phases"]) == {"threshold", "base"}


def test_weight_bits_are_stored_and_change_the_model(files, tmp_path):
    assert _convert(files, tmp_path / "w4", "-T", "4", "--method", "las", "--weight-bits", "4") == 0
    assert read_spiking_metadata(tmp_path / "w4")["spec"]["weight_bits"] == 4
    assert _convert(files, tmp_path / "fp", "-T", "4", "--method", "las") == 0
    assert read_spiking_metadata(tmp_path / "fp")["spec"]["weight_bits"] is None
    w4 = _evaluate(files, tmp_path / "w4", tmp_path / "w4.json")
    fp = _evaluate(files, tmp_path / "fp", tmp_path / "fp.json")
    assert w4["ann"] == fp["ann"]  # the ANN row is the unquantized base model
    assert w4["ann_prefixed"] != fp["ann_prefixed"]  # the prepared model is quantized


@pytest.mark.parametrize(
    ("option", "value"), [("--weight-bits", "3"), ("--mode", "greedy"), ("--method", "spikellm")]
)
def test_bad_choices_exit_2(files, tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        _convert(files, tmp_path / "out", option, value)
    assert exit_info.value.code == 2
    assert f"argument {option}: invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_neurons_sample_the_quantized_model(files, tmp_path):
    """`neurons --weight-bits` fits the activation distributions of the quantized model."""
    reports = {}
    for bits in ("fp", "4"):
        argv = ["--quiet", "neurons", "--model", str(files / "model"), "--method", "las"]
        argv += ["--calibration", str(files / "calib.jsonl"), "--samples", "32", "-T", "4"]
        argv += ["--sequences", "4", "--seq-len", "32", "--json", str(tmp_path / f"{bits}.json")]
        assert main(argv + (["--weight-bits", bits] if bits != "fp" else [])) == 0
        reports[bits] = json.loads((tmp_path / f"{bits}.json").read_text())
    assert (reports["fp"]["weight_bits"], reports["4"]["weight_bits"]) == (None, 4)
    mse = {bits: [site["mse"] for site in report["sites"]] for bits, report in reports.items()}
    assert mse["fp"][0] == mse["4"][0]  # layer 0's q/k/v input is the embedding: unchanged
    assert mse["fp"][1:] != mse["4"][1:]
