"""`phasecode pareto`: every point measured once, resumable, with a table and a plot."""

from __future__ import annotations

import json

import pytest
from helpers import cli_files, progress_bars_off

import phasecode.jobs.pareto as pareto
from phasecode.cli import main
from phasecode.comparison.frontier import Point, front_points
from phasecode.settings import PROBS_BIAS


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_tokenizer):
    root = cli_files(tmp_path_factory.mktemp("pareto"), tiny_tokenizer)
    argv = [
        "pareto", "--model", str(root / "model"), "--calibration", str(root / "calib.jsonl"),
        "--samples", "64", "--sequences", "4", "--calib-seq-len", "32", "-T", "4",
        "--uniform", "4,3", "--masks", "2", "--budgets", "0.9", "--fisher", "3",
        "--unbiased-probs", "3", "--windows", "2",
        "--seq-len", "24", "--tokens", "16", "--text", str(root / "eval.txt"), "--quiet",
        "--out", str(root / "front"),
    ]  # fmt: skip
    with progress_bars_off():
        assert main(argv) == 0
    return root, argv


def test_every_point_is_measured_with_a_table_and_a_plot(swept):
    root, _ = swept
    records = json.loads((root / "front" / "pareto.json").read_text())["records"]
    points = front_points(4, [4, 3], [2], [0.9], [3], [3])
    assert len(points) == 10
    for point in points:
        record = records[point.key]
        assert record["status"] == "ok", record
        assert record["total_ratio"] > 0 and record["compute_ratio"] > 0
        assert record["ppl_ratio"] > 0
    budgeted = records[Point("x", "mgpc", "signed-digit", 4, 0, 0.9).key]["energy_budget"]
    assert budgeted["ratio"] == 0.9 and budgeted["context"] == 16
    fisher = Point("x", "mgpc", "signed-digit", 3, objective="fisher")
    assert fisher.key != Point("x", "mgpc", "signed-digit", 3).key
    assert records[fisher.key]["point"]["objective"] == "fisher"
    unbiased = Point("x", "mgpc", "signed-digit", 3, probs_bias=PROBS_BIAS)
    assert records[unbiased.key]["point"]["probs_bias"] == PROBS_BIAS
    table = (root / "front" / "pareto.md").read_text()
    assert table.count("\n") == len(points) + 2
    assert (root / "front" / "pareto.png").stat().st_size > 0


def test_a_rerun_measures_nothing(swept, monkeypatch):
    _, argv = swept

    def never(*args, **kwargs):
        raise AssertionError("a measured point was measured again")

    monkeypatch.setattr(pareto, "_measure_point", never)
    monkeypatch.setattr(pareto, "calibrate", never)
    with progress_bars_off():
        assert main(argv) == 0
