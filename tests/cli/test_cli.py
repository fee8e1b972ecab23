"""`phasecode neurons` end to end, in-process, on a tiny LLaMA saved to disk."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import CONVERTIBLE_SIZES, write_calibration
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.utils import logging as hf_logging

from phasecode.artifacts import load_artifact
from phasecode.cache.fingerprint import model_fingerprint
from phasecode.cli import build_parser, main
from phasecode.coding.table import CodeTable
from phasecode.models.loading import load_model
from phasecode.settings import METHODS

SITES = 4 * CONVERTIBLE_SIZES["num_hidden_layers"]
SITE_KEYS = {"name", "mse", "lloyd_max_mse", "ratio"}
REPORT_KEYS = {"sites", "mean_ratio", "train_seconds", "timesteps", "grains", "method"}


def _save_model(directory, tokenizer, nan_weight: bool = False):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**CONVERTIBLE_SIZES)).eval()
    if nan_weight:  # one NaN in layer 0's o_proj poisons the residual stream from there on
        with torch.no_grad():
            model.model.layers[0].self_attn.o_proj.weight[3, 5] = float("nan")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    return _save_model(tmp_path_factory.mktemp("model"), tiny_tokenizer)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("calibration") / "calib.jsonl")


@pytest.fixture
def no_hf_bars():
    """Hide transformers' own 'Loading weights' bar, so stderr holds only phasecode's output
    (whether --quiet should hide it is tested on its own below)."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    yield
    if was_enabled:
        hf_logging.enable_progress_bar()


def _argv(model_dir, calibration, *extra) -> list[str]:
    return [
        "--quiet",
        "neurons",
        "--model",
        str(model_dir),
        "--calibration",
        str(calibration),
        "--samples",
        "64",
        "--sequences",
        "4",
        "--seq-len",
        "32",
        *map(str, extra),
    ]


@pytest.fixture(scope="module")
def run_ok(model_dir, calibration, tmp_path_factory):
    """One successful default (mgpc, T=8, 2 grains) run with --json and --out."""
    out = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    try:
        code = main(
            _argv(model_dir, calibration, "--json", out / "report.json", "--out", out / "art")
        )
    finally:
        torch.set_num_threads(threads)
    return code, out


# ----------------------------------------------------------------------------- success


def test_neurons_exits_zero_and_writes_report(run_ok):
    code, out = run_ok
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert report["method"] == "mgpc"
    assert report["timesteps"] == 8 and report["grains"] == 2
    assert report["train_seconds"] > 0
    assert len(report["sites"]) == SITES
    names = [site["name"] for site in report["sites"]]
    assert names == [
        f"layers.{i}.{kind}" for i in range(2) for kind in ("qkv", "o", "gate_up", "down")
    ]
    for site in report["sites"]:
        assert set(site) >= SITE_KEYS
        assert all(math.isfinite(site[k]) for k in ("mse", "lloyd_max_mse", "ratio"))
        assert site["mse"] > 0 and site["lloyd_max_mse"] > 0
        assert site["ratio"] == pytest.approx(site["mse"] / site["lloyd_max_mse"], rel=1e-5)
        assert sum(site["allocation"]) == 8 and len(site["allocation"]) == 2
    mean = sum(site["ratio"] for site in report["sites"]) / SITES
    assert report["mean_ratio"] == pytest.approx(mean, rel=1e-5)


def test_neurons_artifact_matches_report(run_ok, model_dir):
    code, out = run_ok
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    model, _ = load_model(str(model_dir))
    tensors, meta = load_artifact(out / "art", expected_fingerprint=model_fingerprint(model))
    assert meta["kind"] == "neurons"
    assert meta["sites"] == [site["name"] for site in report["sites"]]
    assert meta["timesteps"] == report["timesteps"] == 8
    assert meta["grains"] == 2 and meta["method"] == "mgpc"
    assert meta["allocation"] == [site["allocation"] for site in report["sites"]]
    assert meta["mean_ratio"] == pytest.approx(report["mean_ratio"])
    assert meta["sampling"]["samples"] == 64 and meta["sampling"]["prefix_bos"] is True
    table = CodeTable.from_tensors(tensors, meta["allocation"])
    assert table.sites == SITES and table.timesteps == 8
    assert tensors["loss_curve"].shape[0] == SITES
    for i, site in enumerate(report["sites"]):
        assert table.phase.bases[i, :2].tolist() == pytest.approx(site["bases"])


def test_neurons_prints_a_table(model_dir, calibration, tmp_path, capsys, no_hf_bars):
    code = main(_argv(model_dir, calibration, "--method", "rate", "-T", "4", "--grains", "1"))
    assert code == 0
    out = capsys.readouterr().out
    assert "rate  T=4  grains=1  samples/site=64" in out
    for kind in ("qkv", "o", "gate_up", "down", "all"):
        assert any(line.startswith(kind) for line in out.splitlines()), kind
    assert not list(tmp_path.iterdir())  # neither --json nor --out: nothing written


def test_fixed_code_report_has_no_allocation(model_dir, calibration, tmp_path, no_hf_bars):
    report_path = tmp_path / "nested" / "r.json"
    code = main(
        _argv(model_dir, calibration, "--method", "ttfs", "-T", "40", "--grains", "1")
        + ["--json", str(report_path)]
    )
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["method"] == "ttfs" and report["timesteps"] == 40
    assert all("allocation" not in site for site in report["sites"])
    assert [p.name for p in report_path.parent.iterdir()] == ["r.json"]  # no temp file left


def test_quiet_run_writes_nothing_to_stderr(model_dir, calibration, capsys):
    code = main(_argv(model_dir, calibration, "--method", "phase", "-T", "4", "--grains", "1"))
    assert code == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "option, text, expected",
    [("--probs-bias", "q", "a number or auto"), ("--batch-samples", "some", "a count or all")],
)
def test_number_or_word_options_refuse_other_words_while_parsing(option, text, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main(["convert", option, text, "--out", "unused"])
    assert info.value.code == 2
    assert f"expected {expected}, got {text!r}" in capsys.readouterr().err


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "neurons" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["neurons", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--timesteps", "--grains", "--method", "--calibration", "--out", "--json"):
        assert option in out


def test_parser_defaults():
    args = build_parser().parse_args(["neurons"])
    assert (args.timesteps, args.grains, args.method) == (8, 2, "mgpc")
    assert args.samples == 10_000 and not args.no_rotate and not args.no_prefix
    assert not args.quiet and args.out is None and args.json is None


# ----------------------------------------------------------------------------- bad input


def _assert_user_error(capsys, code, *needles):
    """Exit code 2, and stderr is exactly one line 'phasecode: error: …' naming the problem."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("phasecode: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def _assert_nothing_written(tmp_path):
    assert not (tmp_path / "report.json").exists()
    assert not (tmp_path / "art").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _outputs(tmp_path) -> list[str]:
    return ["--json", str(tmp_path / "report.json"), "--out", str(tmp_path / "art")]


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--timesteps", "0"], ["timesteps", "got 0"]),
        (["--timesteps", "33"], ["timesteps", "1..32", "got 33"]),
        (["-T", "-3"], ["timesteps"]),
        (["-T", "8", "--grains", "9"], ["grains", "got 9"]),
        (["-T", "8", "--grains", "0"], ["grains", "got 0"]),
        (["--method", "ttfs", "-T", "129", "--grains", "1"], ["timesteps", "1..128"]),
        (["--samples", "8"], ["--samples", "8"]),
        (["--sequences", "0"], ["sequences"]),
        (["--seq-len", "1"], ["seq_len"]),
        (["--sequences", "500"], ["tokens"]),
        (["--calibration", "{tmp}/missing.jsonl"], ["calibration file not found", "missing.jsonl"]),
        (["--model", "{tmp}/no/such/model"], ["not found", "no/such/model"]),
        (["--model", "{tmp}"], ["is empty"]),
    ],
)
def test_bad_input_is_one_line_exit_two(
    model_dir, calibration, tmp_path, capsys, no_hf_bars, extra, needles
):
    work = tmp_path / "work"
    work.mkdir()
    extra = [arg.replace("{tmp}", str(work)) for arg in extra]
    code = main(_argv(model_dir, calibration, *extra) + _outputs(tmp_path))
    _assert_user_error(capsys, code, *needles)
    _assert_nothing_written(tmp_path)


def test_bad_calibration_content(model_dir, tmp_path, capsys, no_hf_bars):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n[1, 2]\n')
    code = main(_argv(model_dir, bad) + _outputs(tmp_path))
    _assert_user_error(capsys, code, "bad.jsonl:2")
    _assert_nothing_written(tmp_path)


def test_nan_activations_name_the_site(
    tmp_path_factory, tiny_tokenizer, calibration, capsys, no_hf_bars
):
    nan_dir = _save_model(tmp_path_factory.mktemp("nan_model"), tiny_tokenizer, nan_weight=True)
    out = tmp_path_factory.mktemp("nan_out")
    code = main(_argv(nan_dir, calibration) + _outputs(out))
    # qkv and o of layer 0 are clean; gate_up of layer 0 reads the poisoned residual stream
    _assert_user_error(capsys, code, "site layers.0.gate_up", "NaN")
    _assert_nothing_written(out)


def test_too_many_samples_is_a_user_error(model_dir, calibration, tmp_path, capsys, no_hf_bars):
    argv = _argv(model_dir, calibration) + _outputs(tmp_path)
    argv[argv.index("--samples") + 1] = "100000"
    code = main(argv)
    _assert_user_error(capsys, code, "values per site")
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "argv",
    [
        ["neurons", "--method", "bogus"],
        ["neurons", "-T", "eight"],
        ["neurons", "--unknown-flag"],
        ["convert", "--energy-budget", "0.8", "--budget-mode", "greedy", "--out", "x"],
        [],
        ["train"],
    ],
)
def test_argparse_errors_exit_two(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--json", str(tmp_path / "report.json")] if argv else argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error:" in err.splitlines()[-1]
    assert not list(tmp_path.iterdir())


def test_bogus_method_lists_the_choices(capsys):
    with pytest.raises(SystemExit) as info:
        main(["neurons", "--method", "bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err
    for method in METHODS:
        assert method in err


def test_the_eval_table_keeps_its_columns_at_huge_perplexities():
    from phasecode.jobs.evaluate import format_evaluation

    row = {"windows": 2, "ann": 123456.789, "ann_prefixed": 2.5e7, "snn": 9.9e9, "ratio": 80190.0}
    report = {
        "spec": {
            "method": "mgpc",
            "timesteps": 8,
            "grains": 2,
            "rotate": True,
            "prefix_tokens": [],
        },
        "seconds": {"ann": 1.0, "snn": 2.0},
        "ppl": {"wikitext2": row},
    }
    line = format_evaluation(report).splitlines()[2]
    assert line.split() == ["wikitext2", "2", "1.235e+05", "2.500e+07", "9.900e+09", "80190.0000"]
