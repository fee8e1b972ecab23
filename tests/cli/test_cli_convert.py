"""`phasecode convert` and `phasecode eval` end to end, in-process, on a tiny saved LLaMA."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch
from helpers import CONVERTIBLE_SIZES, WORDS, save_tiny_model
from transformers import AutoModelForCausalLM, GPT2Config
from transformers.utils import logging as hf_logging

from phasecode.artifacts import load_artifact, save_artifact
from phasecode.cache.fingerprint import model_fingerprint
from phasecode.cli import main
from phasecode.coding.baselines import las
from phasecode.conversion.store import read_spiking_metadata
from phasecode.models.loading import load_model


@pytest.fixture(scope="module", autouse=True)
def _restore_global_state():
    """main() turns transformers' progress bars off with --quiet; give the other tests theirs
    back."""
    bars = hf_logging.is_progress_bar_enabled()
    yield
    if bars:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()


@pytest.fixture(autouse=True)
def _quiet_transformers():
    """Transformers' own 'Loading weights' bar would land on stderr before --quiet applies."""
    hf_logging.disable_progress_bar()


def _text(words: int, seed: int) -> str:
    gen = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (words,), generator=gen).tolist())


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer):
    """A saved tiny LLaMA with its tokenizer, a calibration .jsonl and an evaluation text."""
    root = tmp_path_factory.mktemp("cli_convert")
    save_tiny_model(root / "model", tiny_tokenizer)
    lines = [json.dumps({"text": _text(50, seed)}) for seed in range(8)]
    (root / "calib.jsonl").write_text("\n".join(lines) + "\n")
    (root / "eval.txt").write_text(_text(60, 99) + "\n")
    return root


def _convert_argv(model, calibration, out) -> list[str]:
    return [
        "convert",
        "--model",
        str(model),
        "--calibration",
        str(calibration),
        "--samples",
        "32",
        "--sequences",
        "4",
        "--seq-len",
        "32",
        "-T",
        "4",
        "--grains",
        "2",
        "--quiet",
        "--out",
        str(out),
    ]


def _eval_argv(artifact, text, *extra) -> list[str]:
    return [
        "eval",
        str(artifact),
        "--ppl",
        "",  # no built-in corpus: only the --text file (keeps the shared data out of it)
        "--text",
        str(text),
        "--seq-len",
        "16",
        "--limit",
        "2",
        "--quiet",
        *map(str, extra),
    ]


@pytest.fixture(scope="module")
def artifact(files):
    """One successful conversion: its exit code, artifact directory, stdout and stderr."""
    out = files / "artifact"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(_convert_argv(files / "model", files / "calib.jsonl", out))
    return code, out, stdout.getvalue(), stderr.getvalue()


def _assert_user_error(capsys, code: int, *needles: str) -> str:
    """Exit code 2, and stderr is exactly one line 'phasecode: error: …' naming the problem."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("phasecode: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- success


def test_convert_writes_a_spiking_artifact(artifact, files):
    code, out, _, stderr = artifact
    assert code == 0, stderr
    metadata = read_spiking_metadata(out)
    assert metadata["kind"] == "spiking-model"
    model, _ = load_model(str(files / "model"))
    assert metadata["base_model"] == {
        "name": str((files / "model").resolve()),  # resolves from any working directory
        "fingerprint": model_fingerprint(model),
        "dtype": "float32",
    }
    spec = metadata["spec"]
    assert (spec["method"], spec["timesteps"], spec["grains"]) == ("mgpc", 4, 2)
    assert spec["rotate"] and spec["lm_head"] and spec["prefix_tokens"][0] == 0  # BOS
    assert len(metadata["sites"]) == 10 * CONVERTIBLE_SIZES["num_hidden_layers"] + 1
    tensors, _ = load_artifact(out)
    assert tensors["threshold"].shape == (len(metadata["sites"]), 4)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_convert_with_block_reconstruction(files, tmp_path):
    """--reconstruct block tunes each layer's neurons after training; the report says how
    each layer's output loss moved, and the recipe records the choice."""
    out = tmp_path / "rec"
    argv = _convert_argv(files / "model", files / "calib.jsonl", out) + ["--reconstruct", "block"]
    assert main(argv) == 0
    report = read_spiking_metadata(out)["report"]
    layers = report["reconstruction"]["layers"]
    assert [row["layer"] for row in layers] == list(range(CONVERTIBLE_SIZES["num_hidden_layers"]))
    assert all(row["loss_after"] <= row["loss_before"] for row in layers)
    assert report["config"]["reconstruct"] == "block"


def test_convert_with_the_fitted_range(files, tmp_path, capsys):
    """--neuron-range fitted keeps the squared-error fit's range: the recipe records it, the
    summary says so, and the report shows each neuron's saturation beside its site's
    calibration peak."""
    out = tmp_path / "fitted"
    argv = _convert_argv(files / "model", files / "calib.jsonl", out)
    assert main([*argv, "--neuron-range", "fitted"]) == 0
    assert "neuron range: fitted (given)" in capsys.readouterr().out
    report = read_spiking_metadata(out)["report"]
    assert report["config"]["neuron_range"] == "fitted"
    assert any(row["saturation"] < row["calibration_peak"] for row in report["sites"])


def test_convert_prints_a_summary(artifact):
    code, out, stdout, stderr = artifact
    assert code == 0
    assert stderr == ""  # --quiet: no progress bars
    assert "calibration" in stdout and "training" in stdout
    for kind in ("qkv", "probs", "silu", "down", "lm_head"):
        assert kind in stdout
    assert f"saved spiking model to {out}" in stdout


def test_eval_reports_both_perplexities(artifact, files, tmp_path, capsys):
    _, out, _, _ = artifact
    report_path = tmp_path / "eval.json"
    capsys.readouterr()
    code = main(_eval_argv(out, files / "eval.txt", "--json", report_path))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    report = json.loads(report_path.read_text())
    assert list(report["ppl"]) == [str(files / "eval.txt")]
    row = report["ppl"][str(files / "eval.txt")]
    assert {"ann", "snn", "ratio", "ann_prefixed", "windows", "seq_len"} <= set(row)
    assert (row["windows"], row["seq_len"]) == (2, 16)
    for key in ("ann", "snn", "ann_prefixed"):
        assert math.isfinite(row[key]) and row[key] > 1, key
    assert row["ratio"] == pytest.approx(row["snn"] / row["ann"])
    assert row["snn"] != row["ann"]
    assert report["seconds"]["ann"] > 0 and report["seconds"]["snn"] > 0
    assert report["spec"] == read_spiking_metadata(out)["spec"]
    assert "SNN/ANN" in captured.out


# ----------------------------------------------------------------------------- bad input


def test_eval_on_a_directory_that_is_no_artifact(files, tmp_path, capsys):
    code = main(_eval_argv(tmp_path, files / "eval.txt"))
    _assert_user_error(capsys, code, "not a phasecode artifact", str(tmp_path))


def test_eval_on_a_model_directory(files, capsys):
    code = main(_eval_argv(files / "model", files / "eval.txt"))
    _assert_user_error(capsys, code, "not a phasecode artifact")


def test_eval_on_a_neurons_artifact(files, tmp_path, capsys):
    save_artifact(tmp_path, las(torch.ones(2), 4).to_tensors(), {"kind": "neurons"})
    code = main(_eval_argv(tmp_path, files / "eval.txt"))
    _assert_user_error(capsys, code, "not a converted model", "'neurons'", "phasecode convert")


def test_eval_seq_len_beyond_the_model_positions(artifact, files, tmp_path, capsys):
    _, out, _, _ = artifact
    argv = _eval_argv(out, files / "eval.txt", "--json", tmp_path / "r.json")
    argv[argv.index("--seq-len") + 1] = "500"
    code = main(argv)
    _assert_user_error(capsys, code, "seq_len 500", "128 positions")
    assert not (tmp_path / "r.json").exists()


def test_eval_on_an_empty_text_file(artifact, tmp_path, capsys):
    _, out, _, _ = artifact
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = main(_eval_argv(out, empty, "--json", tmp_path / "r.json"))
    _assert_user_error(capsys, code, "empty.txt", "no text")
    assert not (tmp_path / "r.json").exists()


def test_eval_on_a_missing_text_file(artifact, tmp_path, capsys):
    _, out, _, _ = artifact
    code = main(_eval_argv(out, tmp_path / "missing.txt"))
    _assert_user_error(capsys, code, "missing.txt", "not found")


def test_eval_with_a_bogus_corpus(artifact, files, capsys):
    _, out, _, _ = artifact
    argv = _eval_argv(out, files / "eval.txt")
    argv[argv.index("--ppl") + 1] = "bogus"
    code = main(argv)
    _assert_user_error(capsys, code, "unknown corpus 'bogus'", "wikitext2", "c4")


def test_convert_an_unsupported_architecture(files, tiny_tokenizer, tmp_path, capsys):
    gpt2 = tmp_path / "gpt2"
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300)
    AutoModelForCausalLM.from_config(config).save_pretrained(gpt2)
    tiny_tokenizer.save_pretrained(gpt2)
    capsys.readouterr()
    code = main(_convert_argv(gpt2, files / "calib.jsonl", tmp_path / "out"))
    _assert_user_error(capsys, code, "unsupported model type 'gpt2'", "llama")
    assert not (tmp_path / "out").exists()


def test_convert_a_missing_model(files, tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "model"
    code = main(_convert_argv(missing, files / "calib.jsonl", tmp_path / "out"))
    _assert_user_error(capsys, code, "not found", "no/such/model")
    assert not (tmp_path / "out").exists()


def test_a_second_eval_reads_the_anns_scores_back(artifact, files, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PHASECODE_SCORE_CACHE", "1")
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path / "cache"))
    rows = []
    for name in ("first.json", "second.json"):
        argv = _eval_argv(artifact[1], files / "eval.txt", "--json", tmp_path / name)
        assert main(argv) == 0
        rows.append(json.loads((tmp_path / name).read_text())["ppl"][str(files / "eval.txt")])
    first, second = rows
    assert first["ann_source"] == first["ann_prefixed_source"] == "measured"
    assert second["ann_source"] == second["ann_prefixed_source"] == "cache"
    assert "from the cache" in capsys.readouterr().out
    for key in ("ann", "ann_prefixed", "snn"):
        assert second[key] == first[key], key


def test_convert_reads_a_recipe_and_the_typed_options_win(files, tmp_path, capsys):
    """--config RECIPE: its values unless an option is typed; the artifact records the config."""
    from phasecode.conversion.config import ConversionConfig

    recipe = ConversionConfig(
        timesteps=6, grains=3, rounds=3, prefix=None, samples=48, sequences=4, seq_len=32
    )
    recipe.save(tmp_path / "recipe.yaml")
    out = tmp_path / "from-recipe"
    argv = [
        "convert",
        "--model",
        str(files / "model"),
        "--calibration",
        str(files / "calib.jsonl"),
        "--config",
        str(tmp_path / "recipe.yaml"),
        "-T",
        "4",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    metadata = read_spiking_metadata(out)
    config = ConversionConfig.from_dict(metadata["report"]["config"])
    assert config == recipe.replace(timesteps=4)
    assert metadata["spec"]["timesteps"] == 4 and metadata["spec"]["grains"] == 3
    assert metadata["spec"]["prefix_tokens"] == []


@pytest.mark.parametrize(
    "recipe, needle",
    [
        ("timestep: 8\n", "unknown ConversionConfig field"),
        ("grains: 0\n", "recipe.yaml: ConversionConfig.grains"),
    ],
)
def test_a_bad_recipe_is_one_line_before_any_work(files, tmp_path, capsys, recipe, needle):
    (tmp_path / "recipe.yaml").write_text(recipe)
    argv = ["convert", "--model", str(files / "model"), "--quiet", "--out", str(tmp_path / "out")]
    assert main([*argv, "--config", str(tmp_path / "recipe.yaml")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
