"""Quickstart: convert a language model into a spiking LLM and use it from Python.

    python examples/quickstart.py                      # SmolLM2-135M (bundled), T=8, 2 grains
    python examples/quickstart.py --model DIR_OR_GGUF  # any supported model

It loads the model, converts it, generates with transformers' ``generate`` and ``pipeline``,
saves and reloads the spiking model, and measures perplexity (spiking vs. the prepared ANN),
zero-shot accuracy and energy. docs/api.md describes every call.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import transformers

import phasecode as pc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--config", type=Path, help="a ConversionConfig recipe (.yaml/.json)")
    parser.add_argument("--out", type=Path, default=Path("out/quickstart"))
    parser.add_argument("--windows", type=int, default=8, help="WikiText-2 windows to score")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--items", type=int, default=50, help="PIQA items to score")
    parser.add_argument("--tokens", type=int, default=128, help="tokens the energy count runs")
    args = parser.parse_args()
    start = time.perf_counter()

    model, tokenizer = pc.load_model(args.model, device="auto")
    config = pc.ConversionConfig.load(args.config) if args.config else pc.ConversionConfig()
    snn = pc.convert(model, tokenizer, config)  # `model` is now the spiking model's base
    print(snn)

    inputs = tokenizer("The capital of France is", return_tensors="pt").to(snn.device)
    out = snn.generate(**inputs, max_new_tokens=16, do_sample=False)
    print("generate:", tokenizer.decode(out[0], skip_special_tokens=True))
    generator = transformers.pipeline("text-generation", model=snn, tokenizer=tokenizer)
    story = generator("Once upon a time", max_new_tokens=16, do_sample=False)
    print("pipeline:", story[0]["generated_text"])

    snn.save_pretrained(args.out)
    snn = pc.load(args.out)  # re-reads the base model and checks its fingerprint

    windows = dict(windows=args.windows, seq_len=args.seq_len)
    spiking = pc.perplexity(snn, tokenizer, "wikitext2", **windows)
    with snn.analog():  # the prepared ANN: rotations and prefix, no neurons
        prepared = pc.perplexity(snn, tokenizer, "wikitext2", **windows)
    print(
        f"WikiText-2 perplexity: SNN {spiking:.3f}, prepared ANN {prepared:.3f} "
        f"(x{spiking / prepared:.4f})"
    )
    accuracy = pc.zero_shot(snn, tokenizer, ["piqa"], limit=args.items)
    print(f"PIQA acc_norm on {args.items} items: {accuracy['piqa']:.1f} %")
    energy = pc.energy(snn, tokenizer, tokens=args.tokens, windows=1, seq_len=args.seq_len)
    print(
        f"energy SNN/ANN: total {energy['ratios']['total']:.3f}, "
        f"compute {energy['ratios']['compute']:.3f} on {args.tokens} tokens"
    )
    print(f"quickstart done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
