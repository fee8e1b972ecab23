"""`phasecode run` end to end on a tiny LLaMA: one model load serves the ANN's score and the
conversion, and what it reports is what `eval` measures on the artifact it saved."""

from __future__ import annotations

import json

from helpers import tiny_llama

from phasecode.cli import main
from phasecode.cli.run import DEFAULT_OUT, default_out


def test_run_reports_what_eval_measures_on_its_artifact(tmp_path, tiny_tokenizer):
    model = tmp_path / "model"
    tiny = tiny_llama()
    tiny.config.max_position_embeddings = 1024  # run's windows are 512 tokens after a prefix
    tiny.save_pretrained(model)
    tiny_tokenizer.save_pretrained(model)
    out, ran, evaluated = tmp_path / "art", tmp_path / "run.json", tmp_path / "eval.json"
    argv = ["--quiet", "run", "--model", str(model), "--out", str(out), "--limit", "1"]
    assert main([*argv, "--json", str(ran)]) == 0
    assert main(["--quiet", "eval", str(out), "--limit", "1", "--json", str(evaluated)]) == 0
    run_row, eval_row = (json.loads(p.read_text())["ppl"]["wikitext2"] for p in (ran, evaluated))
    for key in ("ann", "ann_prefixed", "snn", "windows", "seq_len"):
        assert run_row[key] == eval_row[key], key
    assert (out / "report" / "report.md").is_file()
    assert main([*argv]) == 2  # another model's artifact is kept unless --force


def test_each_model_has_its_own_default_out():
    assert default_out("smollm2-135m") == DEFAULT_OUT
    assert str(default_out("Qwen/Qwen2-0.5B")) == "out/Qwen2-0.5B-T8"
    assert str(default_out("/models/qwen.gguf")) == "out/qwen-T8"
