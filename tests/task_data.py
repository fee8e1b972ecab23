"""Tiny zero-shot data files in the original release formats, a tiny converted model, and the
hand computation of a continuation's log-likelihood that the task tests compare against."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from helpers import tiny_llama

from phasecode.conversion.convert import SpikingModel, convert
from phasecode.settings import FitSettings, SamplingSettings

ARC_EASY = [
    {
        "id": "e1",
        "question": {
            "stem": "What melts ice?",
            "choices": [
                {"text": "heat", "label": "A"},
                {"text": "a cold wind", "label": "B"},
                {"text": "salt water", "label": "C"},
                {"text": "rock", "label": "D"},
            ],
        },
        "answerKey": "A",
    },
    {  # numeric labels and three choices, as some ARC rows have
        "id": "e2",
        "question": {
            "stem": "Which is alive?",
            "choices": [
                {"text": "a stone", "label": "1"},
                {"text": "a tree", "label": "2"},
                {"text": "glass", "label": "3"},
            ],
        },
        "answerKey": "2",
    },
    {  # five choices
        "id": "e3",
        "question": {
            "stem": "Sun is a",
            "choices": [{"text": t, "label": k} for t, k in zip("ABCDE", "ABCDE", strict=True)],
        },
        "answerKey": "E",
    },
]
ARC_CHALLENGE = [
    {
        "id": "c1",
        "question": {
            "stem": "Why do days change length?",
            "choices": [
                {"text": "tilt", "label": "A"},
                {"text": "clouds", "label": "B"},
                {"text": "the moon", "label": "C"},
                {"text": "wind", "label": "D"},
            ],
        },
        "answerKey": "A",
    }
]
PIQA = [
    {"id": "p1", "goal": "Open a jar", "sol1": "twist the lid", "sol2": "paint the lid"},
    {"id": "p2", "goal": "Dry hair", "sol1": "use ice", "sol2": "use a towel"},
    {"id": "p3", "goal": "Cut bread", "sol1": "knife", "sol2": "spoon and fork"},
]
PIQA_LABELS = [0, 1, 0]
WINOGRANDE = [
    {
        "qID": "w1",
        "sentence": "Ann beat Bo so _ was glad.",
        "option1": "Ann",
        "option2": "Bo",
        "answer": "1",
    },
    {
        "qID": "w2",
        "sentence": "The cup fit in the box because _ was small.",
        "option1": "the cup",
        "option2": "the box",
        "answer": "1",
    },
    {"qID": "w3", "sentence": "_ is red.", "option1": "Sky", "option2": "Blood", "answer": "2"},
]
WINOGRANDE_LABELS = ["1", "1", "2"]


def write_task_data(root: Path) -> Path:
    """The four tasks' files under `root`, laid out as in ../shared/data."""
    _jsonl(root / "arc" / "ARC-Easy-Test.jsonl", ARC_EASY)
    _jsonl(root / "arc" / "ARC-Challenge-Test.jsonl", ARC_CHALLENGE)
    _jsonl(root / "piqa" / "dev.jsonl", PIQA)
    (root / "piqa" / "dev-labels.lst").write_text("".join(f"{x}\n" for x in PIQA_LABELS))
    _jsonl(root / "winogrande" / "dev.jsonl", WINOGRANDE)
    labels = "".join(f"{x}\n" for x in WINOGRANDE_LABELS)
    (root / "winogrande" / "dev-labels.lst").write_text(labels)
    return root


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def tiny_spiking(tokenizer, calibration: Path, method: str = "las") -> SpikingModel:
    """A tiny LLaMA converted at T=4 (a fixed code by default: nothing to train, so fast)."""
    model = tiny_llama(0)
    fit = FitSettings(method, 4, 1)
    sampling = SamplingSettings(samples=64, calibration=calibration, sequences=4, seq_len=32)
    return convert(model, tokenizer, fit, sampling, progress=False)


@torch.no_grad()
def hand_loglikelihood(
    spiking: SpikingModel, surgery: AbstractContextManager, context: str, continuation: str
) -> tuple[float, bool]:
    """log p(continuation | prefix + context), one sequence, no padding: the continuation's
    tokens are those of context + continuation beyond the context's own tokens."""
    tokenizer = spiking.tokenizer
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    target = torch.tensor(whole[len(ctx) :])
    with surgery:
        logits = spiking.model(
            input_ids=torch.tensor([whole[:-1]]), cache=spiking.prefix.cache_for(1), use_cache=True
        ).logits[0]
    logprobs = logits[-len(target) :].float().log_softmax(dim=-1)
    greedy = bool((logprobs.argmax(dim=-1) == target).all())
    return logprobs.gather(1, target[:, None]).sum().item(), greedy
