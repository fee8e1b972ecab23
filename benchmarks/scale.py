"""Benchmark: memory and time of a conversion at the 1B scale, on this CPU, in bfloat16.

A random-weight LLaMA of about 1.1B parameters (TinyLlama's shape: hidden 2048, 22 layers, MLP
5632, 32/4 heads; SmolLM2's 49152-token vocabulary, whose tokenizer it borrows, so 1.17B) is
saved in bfloat16, then converted by the real command in a fresh process:

    phasecode convert --model DIR --dtype bfloat16 --device cpu --samples 256 --sequences 2
                      --seq-len 128 --no-prefix --out OUT

Random weights make the perplexity meaningless, so only the cost is measured: the child's peak
RSS (against the bf16 weights' size; target ≤ 1.5×) and its wall time. Results go to
benchmarks/results/scale.json and docs/scaling.md's table is regenerated from them.

    python benchmarks/scale.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from phasecode.artifacts import write_json_atomic
from phasecode.models.loading import load_model
from phasecode.models.resolve import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
SHAPE = dict(
    hidden_size=2048,
    num_hidden_layers=22,
    intermediate_size=5632,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=49152,  # the default model's tokenizer, which calibration text goes through
    max_position_embeddings=2048,
)


def build(directory: Path) -> int:
    """Save the random bf16 model with the default model's tokenizer; return its size."""
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, torch_dtype="bfloat16")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    _, tokenizer = load_model(DEFAULT_MODEL, device="meta")
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def convert(model_dir: Path, out: Path) -> tuple[int, float, str]:
    """Run the conversion in a child; return (exit code, seconds, its last output lines)."""
    command = [
        sys.executable, "-m", "phasecode.cli", "--quiet", "convert",
        "--model", str(model_dir), "--dtype", "bfloat16", "--device", "cpu",
        "--samples", "256", "--sequences", "2", "--seq-len", "128", "--no-prefix",
        "--out", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return done.returncode, seconds, (done.stdout + done.stderr)[-3000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the model here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.keep or Path(scratch) / "model"
        if not (model_dir / "config.json").is_file():
            parameters = build(model_dir)
        else:
            parameters = sum(
                p.numel() for p in load_model(str(model_dir), device="meta")[0].parameters()
            )
        code, seconds, tail = convert(model_dir, Path(scratch) / "artifact")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    weights = 2 * parameters
    result = {
        "shape": SHAPE,
        "parameters": parameters,
        "bf16_weights_gib": weights / 2**30,
        "exit_code": code,
        "seconds": seconds,
        "peak_rss_gib": peak / 2**30,
        "peak_over_weights": peak / weights,
        "output_tail": tail.splitlines()[-16:],
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json_atomic(RESULTS, result)
    print(json.dumps({k: v for k, v in result.items() if k != "output_tail"}, indent=2))
    print("\n".join(result["output_tail"]))


if __name__ == "__main__":
    main()
