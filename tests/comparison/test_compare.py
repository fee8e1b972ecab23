"""`phasecode compare` end to end on a tiny saved LLaMA: grid, resumability, failures, tables,
plot, zero-shot tasks (through a stand-in scorer) and bad input."""

from __future__ import annotations

import json

import pytest
from helpers import cli_files, progress_bars_off

import phasecode.comparison.evaluate as evaluate
import phasecode.comparison.grid as grid
import phasecode.evaluation.tasks as zero_shot
import phasecode.jobs.compare as compare_job
from phasecode.cli import main
from phasecode.evaluation.perplexity import load_corpus, token_windows
from phasecode.inference.nll import perplexity
from phasecode.models.loading import load_model

GRID = ["--timesteps", "4,6", "--methods", "mgpc,las,ttfs", "--grains", "1,2"]
CELLS = 1 + 2 * (2 + 1)  # TTFS once at T=128; per T: mgpc with 2 grains, LAS


@pytest.fixture(scope="module", autouse=True)
def _quiet_transformers():
    with progress_bars_off():
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    return cli_files(tmp_path_factory.mktemp("compare"), tiny_tokenizer)


def _argv(files, out, *grid_options: str) -> list[str]:
    return [
        "--quiet",
        "compare",
        "--model",
        str(files / "model"),
        "--calibration",
        str(files / "calib.jsonl"),
        "--samples",
        "32",
        "--sequences",
        "4",
        "--calib-seq-len",
        "32",
        "--rounds",
        "2",
        "--corpus",
        str(files / "eval.txt"),
        "--seq-len",
        "32",
        "--limit",
        "2",
        "--out",
        str(out),
        *(grid_options or GRID),
    ]


class Counter:
    """Wraps a function, counting calls; ``fail`` raises for cells of that method."""

    def __init__(self, function, fail: str | None = None) -> None:
        self.function, self.fail, self.calls = function, fail, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail is not None and args[1].method == self.fail:
            raise RuntimeError(f"boom in {self.fail}")
        return self.function(*args, **kwargs)


@pytest.fixture(scope="module")
def first_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare_out")
    with pytest.MonkeyPatch.context() as patch:
        fits = Counter(grid.fit_spiking)
        patch.setattr(grid, "fit_spiking", fits)
        code = main(_argv(files, out))
    return code, out, fits.calls


def _records(out) -> dict:
    return json.loads((out / "results.json").read_text())["records"]


def test_first_run_converts_every_cell_and_writes_the_outputs(first_run):
    code, out, fits = first_run
    assert code == 0
    assert fits == CELLS
    records = _records(out)
    cells = {k: r for k, r in records.items() if not k.startswith("ann-")}
    assert len(cells) == CELLS and all(r["status"] == "ok" for r in cells.values())
    assert sorted((r["cell"]["method"], r["cell"]["timesteps"]) for r in cells.values()) == [
        ("las", 4), ("las", 6), ("mgpc", 4), ("mgpc", 4), ("mgpc", 6), ("mgpc", 6), ("ttfs", 128)
    ]  # fmt: skip
    for record in cells.values():
        seconds = record["seconds"]
        assert seconds["conversion"] == seconds["calibration"] + seconds["training"] > 0
        assert record["ppl"] > 1 and record["ppl"] != record["ann_prepared_ppl"]
    assert (out / "ppl_vs_T.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_ann_row_is_the_base_model_on_the_same_windows(first_run, files, tiny_tokenizer):
    _, out, _ = first_run
    (ann,) = [r for k, r in _records(out).items() if k.startswith("ann-")]
    model, _ = load_model(str(files / "model"))
    windows = token_windows(tiny_tokenizer, load_corpus(str(files / "eval.txt")), 32, 2)
    assert ann["ppl"] == perplexity(model, windows, batch_size=4, progress=False).ppl


def test_a_cell_equals_the_same_conversion_through_convert_and_eval(first_run, files, tmp_path):
    """Same sites, outlier handling and evaluation: LAS T=4 gives the same perplexity."""
    _, out, _ = first_run
    (las,) = [r for r in _records(out).values() if r.get("cell", {}).get("method") == "las"
              and r["cell"]["timesteps"] == 4]  # fmt: skip
    convert = ["--quiet", "convert", "--model", str(files / "model"), "--method", "las", "-T", "4"]
    convert += ["--calibration", str(files / "calib.jsonl"), "--samples", "32"]
    convert += ["--sequences", "4", "--seq-len", "32", "--out", str(tmp_path / "las")]
    convert += ["--neuron-range", "fitted"]  # the grid keeps the paper's fitted range
    assert main(convert) == 0
    report = tmp_path / "eval.json"
    evaluate = ["--quiet", "eval", str(tmp_path / "las"), "--ppl", "", "--text"]
    evaluate += [str(files / "eval.txt"), "--seq-len", "32", "--limit", "2", "--json", str(report)]
    assert main(evaluate) == 0
    row = json.loads(report.read_text())["ppl"][str(files / "eval.txt")]
    assert las["ppl"] == row["snn"]
    assert las["ann_prepared_ppl"] == row["ann_prefixed"]


def test_table_is_shaped_like_the_paper(first_run):
    _, out, _ = first_run
    table = (out / "table.md").read_text()
    assert "## Perplexity" in table and "## Accuracy" in table
    assert "| Method | T | Time Cost | PPL |" in table
    assert "| Method | T | Time Cost | WinoGrande | ArcC | ArcE | PiQA | Avg. Acc |" in table
    assert table.count("| ANN | N/A | N/A |") == 2
    assert table.count("| SpikeLLM | 8 | not reproduced¹ |") == 2 and "¹ SpikeLLM" in table
    assert table.count("| TTFSFormer | 128 |") == 2  # its own row, not one per T
    for t in (4, 6):
        for name in ("LAS", "Ours (Grain=1)", "Ours (Grain=2)"):
            assert table.count(f"| {name} | {t} |") == 2, (name, t)
    assert table.split("## Accuracy")[0].count("—") == 1  # only SpikeLLM has no PPL


def test_a_rerun_recomputes_nothing(first_run, files, monkeypatch):
    _, out, _ = first_run
    before = (out / "results.json").read_text()
    fits, calibrations = Counter(grid.fit_spiking), Counter(grid.calibrate)
    ann, cells = Counter(compare_job.perplexity), Counter(evaluate.perplexity)
    monkeypatch.setattr(grid, "fit_spiking", fits)
    monkeypatch.setattr(grid, "calibrate", calibrations)
    monkeypatch.setattr(compare_job, "perplexity", ann)
    monkeypatch.setattr(evaluate, "perplexity", cells)
    assert main(_argv(files, out)) == 0
    assert (fits.calls, calibrations.calls, ann.calls, cells.calls) == (0, 0, 0, 0)
    assert (out / "results.json").read_text() == before


def test_a_new_setting_computes_only_its_cells(first_run, files, monkeypatch):
    _, out, _ = first_run
    fits = Counter(grid.fit_spiking)
    monkeypatch.setattr(grid, "fit_spiking", fits)
    argv = _argv(files, out, "--timesteps", "4,6", "--methods", "las,rate", "--grains", "1")
    assert main(argv) == 0
    assert fits.calls == 2  # rate at T=4 and 6; LAS is reused
    table = (out / "table.md").read_text()
    assert "Rate (IF)" in table and "Ours" not in table  # the table shows this grid only


def test_a_failing_cell_is_recorded_and_the_exit_code_says_so(files, tmp_path, capsys):
    out = tmp_path / "out"
    options = ["--timesteps", "4", "--methods", "las,rate", "--grains", "1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grid, "fit_spiking", Counter(grid.fit_spiking, fail="rate"))
        assert main(_argv(files, out, *options)) == 1
    err = capsys.readouterr().err
    assert "1 of 2 cells failed" in err and "boom in rate" in err
    records = _records(out)
    (failed,) = [r for r in records.values() if r["status"] == "failed"]
    assert failed["cell"]["method"] == "rate" and failed["error"] == "RuntimeError: boom in rate"
    assert sum(r["status"] == "ok" for r in records.values()) == 2  # ANN and LAS
    assert "failed: RuntimeError: boom in rate" in (out / "table.md").read_text()
    fits = Counter(grid.fit_spiking)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grid, "fit_spiking", fits)
        assert main(_argv(files, out, *options)) == 0
    assert fits.calls == 1  # only the failed cell is retried
    assert all(r["status"] == "ok" for r in _records(out).values())


def test_weight_bits_add_a_column_and_the_quantized_ann(files, tmp_path):
    out = tmp_path / "out"
    options = ["--timesteps", "4", "--methods", "las", "--weight-bits", "fp,8"]
    assert main(_argv(files, out, *options)) == 0
    table = (out / "table.md").read_text()
    assert "| Method | T | Weight Bit | Time Cost | PPL |" in table
    assert "| LAS | 4 | full |" in table and "| LAS | 4 | 8 |" in table
    assert "| ANN (prepared) | N/A | 8 | N/A |" in table
    cells = [r for r in _records(out).values() if "cell" in r]
    assert {r["cell"]["weight_bits"] for r in cells} == {None, 8}
    assert len({r["ann_prepared_ppl"] for r in cells}) == 2


def _fake_scores(monkeypatch) -> list:
    """A stand-in for lm-eval's scoring (the real one is covered by test_tasks.py and the
    integration test below); records its calls."""
    calls = []

    def score_tasks(spiking, tasks, limit=None, batch_size=16, progress=True):
        calls.append((spiking.spec.method, tuple(tasks), limit))
        snn = 50.0 if spiking.spec.method == "las" else 40.0
        return {t: {"ann": 60.0, "snn": snn, "n": limit, "metric": "acc"} for t in tasks}

    monkeypatch.setattr(zero_shot, "score_tasks", score_tasks)
    return calls


def test_zero_shot_tasks_fill_the_accuracy_block(files, tmp_path, monkeypatch):
    calls = _fake_scores(monkeypatch)
    out = tmp_path / "out"
    options = ["--timesteps", "4", "--methods", "las,rate", "--tasks", "arc_easy,piqa"]
    assert main([*_argv(files, out, *options), "--task-limit", "5"]) == 0
    assert sorted(calls) == [("las", ("arc_easy", "piqa"), 5), ("rate", ("arc_easy", "piqa"), 5)]
    table = (out / "table.md").read_text()
    assert "| ANN | N/A | N/A | — | — | 60.00 | 60.00 | 60.00 |" in table
    assert "| LAS | 4 | " in table and "| — | — | 50.00 | 50.00 | 50.00 |" in table
    assert "| — | — | 40.00 | 40.00 | 40.00 |" in table
    calls.clear()
    argv = _argv(files, out, "--timesteps", "4", "--methods", "las,rate", "--tasks", "all")
    assert main(argv) == 0  # other eval settings: other cell ids, computed again
    assert len(calls) == 2 and calls[0][1] == ("arc_easy", "arc_challenge", "piqa", "winogrande")


def test_zero_shot_tasks_through_lm_eval(files, tmp_path):
    """The real scorer on the staged data, two examples per task."""
    out = tmp_path / "out"
    options = ["--timesteps", "4", "--methods", "las", "--tasks", "piqa,winogrande"]
    assert main([*_argv(files, out, *options), "--task-limit", "2"]) == 0
    (record,) = [r for r in _records(out).values() if "cell" in r]
    assert set(record["tasks"]) == {"piqa", "winogrande"}
    for scores in record["tasks"].values():
        assert scores["n"] == 2 and {"ann", "snn", "metric"} <= set(scores)
        assert scores["snn"] in (0.0, 50.0, 100.0)
    accuracy = (out / "table.md").read_text().split("## Accuracy")[1]
    ann_row = next(line for line in accuracy.splitlines() if line.startswith("| ANN |"))
    winogrande, arc_c, arc_e, piqa, mean = ann_row.strip("| ").split(" | ")[3:]
    assert (arc_c, arc_e) == ("—", "—") and "—" not in (winogrande, piqa, mean)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--methods", "mgpc,foo"], "unknown method 'foo'"),
        (["--methods", "spikellm"], "SpikeLLM is not reproduced"),
        (["--timesteps", "4,x"], "--timesteps: cannot read '4,x'"),
        (["--timesteps", ","], "--timesteps needs at least one value"),
        (["--timesteps", "0"], "timesteps must be an integer in 1..32, got 0"),
        (["--timesteps", "40", "--methods", "las"], "1..32, got 40"),
        (["--weight-bits", "3"], "weight bits must be 8 or 4, got 3"),
        (["--weight-bits", "8,half"], "--weight-bits: cannot read"),
        (["--grains", "5", "--timesteps", "4"], "grains must be in 1..T=4, got 5"),
        (["--modes", "greedy"], "unknown training mode 'greedy'"),
        (["--tasks", "hellaswag"], "unknown task 'hellaswag'"),
        (["--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys, options, needle):
    out = tmp_path / "out"
    code = main([*_argv(files, out), *options])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("phasecode: error: "), err
    assert needle in lines[0]
    assert not out.exists()


def test_the_grid_codes_with_the_papers_binary_neuron_whatever_converts_default():
    from phasecode.settings import FitSettings, TrainConfig

    assert FitSettings().code == "signed-digit"  # convert's default for mgpc
    assert grid.Cell("mgpc", 8, 2).fit(TrainConfig()).code == "binary"
    assert grid.Cell("las", 8).fit(TrainConfig()).code == "binary"
    assert grid.Cell("mgpc", 8, 2).fit(TrainConfig()).neuron_range == "fitted"
