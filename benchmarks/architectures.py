"""The architectures phasecode adapts (issue 23): what each costs and whether it stays exact.

    python benchmarks/architectures.py            # measure, write JSON and the docs table
    python benchmarks/architectures.py --table    # only rewrite the table from the JSON

1. Tiny random models (tests/architectures.py's configs, plus LLaMA and Qwen2): the wall time
   of ``pc.convert`` with default settings (WikiText-2 calibration, T = 8; after one untimed
   conversion that pays for imports and kernels), the largest
   relative logit change of the full rotation in float64 (online rotations as hooks), and the
   simulator against the fast path in float64 with a prefix (``simulate --check``).
2. Published shapes (configs only, weights on the meta device: nothing is downloaded): the
   ANN's energy per token at a 512-token window under the 45 nm costs, the lm_head's share of
   it, and what each online rotation adds per token, as a fraction of the ANN's energy (the
   post-norm rotation runs on each of its T increments, priced at T = 8).
3. The same shapes' online rotations timed against the linear they sit next to (one thread,
   512 tokens, float32): the post-norm rotation against o_proj, the down_proj rotation
   against down_proj.

Writes benchmarks/results/architectures.json and docs/results-architectures.md. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "benchmarks" / "results" / "architectures.json"
DOC = ROOT / "docs" / "results-architectures.md"

# published config.json shapes (the fields that set the costs)
PUBLISHED = {
    "SmolLM2-135M (llama)": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
    ),
    "Qwen2.5-0.5B (qwen2)": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
    ),
    "Llama-3.2-1B (llama, rope llama3)": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
    ),
    "Qwen3-0.6B (qwen3)": dict(
        model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
    ),
    "Gemma-3-270M (gemma3_text)": dict(
        model_type="gemma3_text", hidden_size=640, intermediate_size=2048,
        num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        query_pre_attn_scalar=256, vocab_size=262144, sliding_window=512,
    ),
    "Phi-3-mini (phi3)": dict(
        model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, pad_token_id=0,
    ),
    "OLMo-2-1B (olmo2)": dict(
        model_type="olmo2", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=16, vocab_size=100352, pad_token_id=0,
    ),
}  # fmt: skip
CONTEXT, TIMESTEPS, TOKENS = 512, 8, 512


def tiny_rows() -> list[dict]:
    from architectures import ARCHITECTURES, tiny_architecture
    from helpers import CONVERTIBLE_SIZES, randomize_weights, write_calibration
    from transformers import AutoTokenizer

    import phasecode as pc
    from phasecode.api.simulate import simulation_report
    from phasecode.conversion.convert import convert
    from phasecode.inference.prefix_choice import PrefixRequest
    from phasecode.models.precision import to_float64
    from phasecode.settings import FitSettings, SamplingSettings, TrainConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    warm_up = randomize_weights(tiny_architecture("qwen3"), seed=1)  # imports, kernels, data
    pc.convert(warm_up, tokenizer, pc.ConversionConfig(), progress=False)
    rows = []
    names = ["llama", "qwen2", *ARCHITECTURES]
    for name in names:
        if name in ("llama", "qwen2"):
            config = AutoConfig.for_model(name, **CONVERTIBLE_SIZES)
            torch.manual_seed(0)
            build = lambda c=config: AutoModelForCausalLM.from_config(c).eval()  # noqa: E731
        else:
            build = lambda n=name: tiny_architecture(n)  # noqa: E731
        model = randomize_weights(build(), seed=1)
        start = time.perf_counter()
        snn = pc.convert(model, tokenizer, pc.ConversionConfig(), progress=False)
        seconds = time.perf_counter() - start
        del snn

        tokens = torch.randint(2, 258, (2, 24), generator=torch.Generator().manual_seed(3))
        error = rotation_error(to_float64(randomize_weights(build(), seed=1)), tokens)

        with tempfile.TemporaryDirectory() as tmp:
            calibration = write_calibration(Path(tmp) / "calib.jsonl")
            sampling = SamplingSettings(samples=64, calibration=calibration, sequences=4)
            fit = FitSettings("mgpc", 8, 2, TrainConfig(rounds=4))
            spiking = convert(
                to_float64(randomize_weights(build(), seed=1)),
                tokenizer,
                fit,
                sampling,
                progress=False,
                prefix=PrefixRequest("ids", ids=(0, 7, 9)),
            )
            check = simulation_report(spiking, tokens[:1], check=True)["check"]
        rows.append(
            {
                "architecture": name,
                "convert_seconds": seconds,
                "rotation_max_relative_error": error,
                "simulate_check_relative": check["max_relative_difference"],
                "simulate_check_passed": check["passed"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


@torch.no_grad()
def rotation_error(model: torch.nn.Module, tokens: torch.Tensor) -> float:
    """The full rotation's largest relative logit change, its online rotations as hooks."""
    from architectures import online_rotations

    from phasecode.models.rotation import fold_value_rotation, post_norm_rotation, rotate_model

    reference = model(tokens).logits
    down = rotate_model(model, 3)
    fold_value_rotation(model, 3)
    online_rotations(model, down, post_norm_rotation(model, 3))
    rotated = model(tokens).logits
    return float((rotated - reference).abs().max() / reference.abs().max())


def rotation_times(config, head_dim: int, post_norms: bool) -> tuple[float | None, float]:
    """(post-norm rotation / o_proj, down_proj rotation / down_proj) in seconds."""
    from phasecode.models.hadamard import OnlineRotation

    hidden, inter = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads * head_dim
    x, o_input = torch.randn(TOKENS, hidden), torch.randn(TOKENS, heads)
    o_weight = torch.randn(hidden, heads) * 0.01
    y, down_weight = torch.randn(TOKENS, inter), torch.randn(hidden, inter) * 0.01
    residual, intermediate = OnlineRotation(hidden), OnlineRotation(inter)
    post = None
    if post_norms:
        post = _seconds(lambda: residual(x)) / _seconds(lambda: o_input @ o_weight.T)
    return post, _seconds(lambda: intermediate(y)) / _seconds(lambda: y @ down_weight.T)


def tiny_tokenizer_dir() -> str:
    """The tests' byte-level tokenizer, saved once to a temporary directory."""
    from helpers import byte_tokenizer

    directory = tempfile.mkdtemp(prefix="tiny-tokenizer-")
    byte_tokenizer().save_pretrained(directory)
    return directory


def published_rows() -> list[dict]:
    from phasecode.models.adapters import adapter_for
    from phasecode.models.sites import spiking_sites
    from phasecode.simulation.energy import PRESETS
    from phasecode.simulation.estimate import rotation_pj, site_energy

    costs = PRESETS["45nm-fp32"]
    mac = costs.mac_pj + 2 * costs.read_pj
    add = costs.ac_pj + 2 * costs.read_pj
    rows = []
    torch.set_num_threads(1)
    for label, fields in PUBLISHED.items():
        fields = dict(fields)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        adapter = adapter_for(model)
        sites = [site.name for site in spiking_sites(model)]
        terms = site_energy(model, sites, costs, CONTEXT, prefix=1)
        layers, hidden = config.num_hidden_layers, config.hidden_size
        inter = config.intermediate_size
        head_dim = adapter.head_dim(config)
        q_kv = (config.num_attention_heads + config.num_key_value_heads) * head_dim
        down = layers * rotation_pj(inter, costs, add, mac)
        heads = layers * q_kv * (torch.log2(torch.tensor(head_dim)).item() * add + costs.write_pj)
        post = layers * len(adapter.post_norms) * rotation_pj(hidden, costs, add, mac) * TIMESTEPS

        post_time, down_time = rotation_times(config, head_dim, bool(adapter.post_norms))
        rows.append(
            {
                "model": label,
                "model_type": config.model_type,
                "post_norms": len(adapter.post_norms),
                "ann_pj_per_token": terms.ann_pj,
                "lm_head_share_of_ann": terms.ann_head_pj / terms.ann_pj,
                "down_rotation_share": down / terms.ann_pj,
                "head_rotation_share": heads / terms.ann_pj,
                "post_norm_rotation_share": post / terms.ann_pj,
                "post_norm_rotation_vs_o_proj_time": post_time,
                "down_rotation_vs_down_proj_time": down_time,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _seconds(fn, repeats: int = 20) -> float:
    """The fastest of ``repeats`` calls after two warm-ups."""
    fn(), fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def table(results: dict) -> str:
    lines = [
        "# Results: the architectures phasecode adapts",
        "",
        "Regenerate with `python benchmarks/architectures.py` (`--table` rewrites this page from "
        "`benchmarks/results/architectures.json`). What each architecture changes is in "
        "docs/architectures.md. Machine: "
        f"{results['machine']}.",
        "",
        "## Tiny random models: conversion time and exactness",
        "",
        "`pc.convert` with default settings (WikiText-2 calibration, T = 8, the prefix chosen by "
        "measurement) on the tiny config of tests/architectures.py; the full rotation's largest "
        "relative logit change in float64; the simulator against the fast path in float64 with "
        "a 3-token prefix (`simulate --check`).",
        "",
        "| architecture | convert (s) | rotation error (float64) | simulator vs fast path "
        "| check |",
        "|---|---|---|---|---|",
    ]
    for row in results["tiny"]:
        lines.append(
            f"| {row['architecture']} | {row['convert_seconds']:.1f} | "
            f"{row['rotation_max_relative_error']:.1e} | {row['simulate_check_relative']:.1e} | "
            f"{'passed' if row['simulate_check_passed'] else 'FAILED'} |"
        )
    lines += [
        "",
        "## Published shapes: the lm_head's share and what the online rotations cost",
        "",
        f"Per token at a {CONTEXT}-token window, 45 nm fp32 costs (configs only, no weights). "
        "Shares are of the ANN's energy per token. The post-norm rotation (Gemma 3, OLMo 2: "
        f"the residual rotation applied after each post-norm) runs on each of T = {TIMESTEPS} "
        "increments; the down_proj and per-head rotations run once per token. Times: one "
        f"thread, {TOKENS} tokens, float32, the fastest of 20 calls.",
        "",
        "| model | ANN µJ/token | lm_head share | down rot. | head rot. | post-norm rot. | "
        "post-norm rot. / o_proj time | down rot. / down_proj time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["published"]:
        post_time = row["post_norm_rotation_vs_o_proj_time"]
        lines.append(
            f"| {row['model']} | {row['ann_pj_per_token'] / 1e6:.1f} | "
            f"{row['lm_head_share_of_ann']:.1%} | {row['down_rotation_share']:.2%} | "
            f"{row['head_rotation_share']:.2%} | {row['post_norm_rotation_share']:.2%} | "
            f"{'–' if post_time is None else f'{post_time:.2f}'} | "
            f"{row['down_rotation_vs_down_proj_time']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="only rewrite the docs table")
    args = parser.parse_args()
    if not args.table:
        import platform

        results = {
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}",
            "tiny": tiny_rows(),
            "published": published_rows(),
        }
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    DOC.write_text(table(json.loads(RESULTS.read_text())))
    print(DOC.read_text())


if __name__ == "__main__":
    main()
