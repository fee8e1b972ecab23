"""Small helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

# conftest's tiny 2-layer shape, with a vocabulary covering the byte-level tiny tokenizer
# (its ids reach 257), so the model can be converted and evaluated on real text
CONVERTIBLE_SIZES = dict(
    vocab_size=258,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)

WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy",
    "dog", "while", "spiking", "neurons", "code", "phases",
]  # fmt: skip


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (one token per byte, ids 2..257) with <s>=0 as BOS and </s>=1."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "</s>": 1} | {char: i + 2 for i, char in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


def write_calibration(path: Path, docs: int = 12, words: int = 50) -> Path:
    """A reproducible calibration .jsonl of random WORDS documents."""
    gen = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(docs):
        picks = torch.randint(len(WORDS), (words,), generator=gen).tolist()
        lines.append(json.dumps({"text": " ".join(WORDS[i] for i in picks)}))
    path.write_text("\n".join(lines) + "\n")
    return path


@torch.no_grad()
def tiny_calibrated(directory: Path, tokenizer):
    """A float64 tiny LLaMA calibrated on a small file without a prefix (``Calibrated``)."""
    from phasecode.conversion.convert import calibrate
    from phasecode.inference.prefix_choice import NO_PREFIX
    from phasecode.models.precision import to_float64
    from phasecode.settings import SamplingSettings

    torch.manual_seed(0)
    model = to_float64(AutoModelForCausalLM.from_config(LlamaConfig(**CONVERTIBLE_SIZES))).eval()
    calibration = write_calibration(directory / "calib.jsonl")
    sampling = SamplingSettings(samples=64, calibration=calibration, sequences=4, seq_len=32)
    return calibrate(model, tokenizer, sampling, prefix=NO_PREFIX, progress=False)


def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens).logits


@torch.no_grad()
def eager_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The model's own eager attention, whatever implementation it was set to."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        return model(tokens).logits
    finally:
        model.config._attn_implementation = previous


def tiny_llama(seed: int = 0) -> nn.Module:
    """A 2-layer LLaMA whose vocabulary covers the byte-level tiny tokenizer (ids up to 257)."""
    torch.manual_seed(seed)
    config = LlamaConfig(**CONVERTIBLE_SIZES, max_position_embeddings=128)
    return AutoModelForCausalLM.from_config(config).eval()


def save_tiny_model(directory: Path, tokenizer, seed: int = 0) -> Path:
    """``tiny_llama`` saved with the tokenizer as a local model directory `--model` accepts."""
    tiny_llama(seed).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def text_file(path: Path, words: int = 200, seed: int = 9) -> Path:
    """A plain text of random WORDS, for perplexity on a local file."""
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(WORDS), (words,), generator=gen).tolist()
    path.write_text(" ".join(WORDS[i] for i in picks) + "\n")
    return path


def cli_files(root: Path, tokenizer) -> Path:
    """A saved ``tiny_llama``, a calibration .jsonl and an evaluation text under root."""
    save_tiny_model(root / "model", tokenizer)
    write_calibration(root / "calib.jsonl", docs=8)
    text_file(root / "eval.txt")
    return root


@contextlib.contextmanager
def progress_bars_off() -> Iterator[None]:
    """transformers' progress bars off inside, back on after if they were on before."""
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    yield
    if bars:
        hf_logging.enable_progress_bar()


@torch.no_grad()
def randomize_weights(model: nn.Module, seed: int) -> nn.Module:
    """Random linears, embeddings, biases and RMSNorm gains: freshly initialised norms have
    γ = 1 and biases 0, which would hide fusion and rotation bugs."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.normal_(0, module.in_features**-0.5, generator=gen)
            if module.bias is not None:
                module.bias.normal_(0, 0.1, generator=gen)
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0, 1, generator=gen)
    for norm in [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]:
        norm.weight.uniform_(0.5, 1.5, generator=gen)
    return model
