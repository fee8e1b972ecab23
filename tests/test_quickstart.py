"""examples/quickstart.py runs end to end, as a user would run it, on the tiny test model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import save_tiny_model

import phasecode as pc

QUICKSTART = Path(__file__).parents[1] / "examples" / "quickstart.py"


def test_quickstart_runs_on_a_tiny_model(tmp_path, tiny_tokenizer):
    save_tiny_model(tmp_path / "model", tiny_tokenizer)
    recipe = pc.ConversionConfig(samples=64, sequences=4, seq_len=32, rounds=4)
    recipe.save(tmp_path / "recipe.yaml")
    argv = [
        sys.executable,
        str(QUICKSTART),
        "--model",
        str(tmp_path / "model"),
        "--config",
        str(tmp_path / "recipe.yaml"),
        "--out",
        str(tmp_path / "out"),
        "--windows",
        "1",
        "--seq-len",
        "64",
        "--items",
        "4",
        "--tokens",
        "16",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for needle in ("generate:", "pipeline:", "perplexity: SNN", "PIQA", "energy SNN/ANN"):
        assert needle in done.stdout
    assert (tmp_path / "out" / "neurons.json").is_file()
