"""Small helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy",
    "dog", "while", "spiking", "neurons", "code", "phases",
]  # fmt: skip


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
