"""`phasecode generate`: greedy decoding with a KV cache, on the fast path or as spikes.

The fast path keeps transformers' cache of analog keys/values (after the prefix) and codes
them on every use; the simulator keeps their spike trains (``simulation.cache``). Coding is
element-wise and deterministic, so both attend to the same trains and, in exact arithmetic,
pick the same tokens.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import DynamicCache

from phasecode.coding.neuron import mask_window
from phasecode.conversion.convert import SpikingModel
from phasecode.conversion.store import load_spiking, read_spiking_metadata
from phasecode.errors import PhasecodeError
from phasecode.evaluation.perplexity import check_seq_len
from phasecode.simulation.network import SpikingSimulator


@torch.no_grad()
def greedy_fast(
    spiking: SpikingModel, prompt: torch.Tensor, new_tokens: int, mask_strength: int = 0
) -> list[int]:
    """Greedy continuation of ``prompt`` [1, S] by the fast path."""
    model = spiking.model
    cache = spiking.prefix.cache_for(1) if spiking.prefix is not None else DynamicCache()
    with spiking.coded(mask_strength):
        return _greedy(
            lambda ids: model(input_ids=ids, cache=cache, use_cache=True).logits,
            prompt,
            new_tokens,
            spiking.tokenizer.eos_token_id,
        )


@torch.no_grad()
def greedy_spiking(
    spiking: SpikingModel, prompt: torch.Tensor, new_tokens: int, mask_strength: int = 0
) -> list[int]:
    """Greedy continuation of ``prompt`` [1, S] by the spike-level simulator."""
    simulator = SpikingSimulator(spiking, mask_strength)
    cache = simulator.new_cache(1)
    return _greedy(
        lambda ids: simulator.forward(ids, cache),
        prompt,
        new_tokens,
        spiking.tokenizer.eos_token_id,
    )


def _greedy(step, prompt: torch.Tensor, new_tokens: int, eos: int | None) -> list[int]:
    out: list[int] = []
    logits = step(prompt)
    for _ in range(new_tokens):
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token == eos or len(out) == new_tokens:
            break
        logits = step(torch.tensor([[token]], device=prompt.device))
    return out


def check_request(prompt: str, new_tokens: int) -> None:
    if not prompt.strip():
        raise PhasecodeError("the prompt is empty")
    if new_tokens < 1:
        raise PhasecodeError(f"--max-new-tokens must be >= 1, got {new_tokens}")


def encode_prompt(spiking: SpikingModel, prompt: str, new_tokens: int) -> torch.Tensor:
    """[1, S] prompt ids, checked to fit the context with the prefix and the new tokens."""
    check_request(prompt, new_tokens)
    ids = spiking.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    prefix = len(spiking.prefix) if spiking.prefix is not None else 0
    check_seq_len(spiking.model, len(ids) + new_tokens, prefix)
    return torch.tensor([ids])


def generate_job(
    artifact: Path,
    prompt: str,
    new_tokens: int = 32,
    spiking_run: bool = False,
    float64: bool = False,
    mask_strength: int = 0,
) -> dict:
    metadata = read_spiking_metadata(artifact)
    mask_window(metadata["spec"]["timesteps"], mask_strength)
    check_request(prompt, new_tokens)  # before the model loads
    spiking = load_spiking(artifact, float64=float64)
    ids = encode_prompt(spiking, prompt, new_tokens)
    start = time.perf_counter()
    generate = greedy_spiking if spiking_run else greedy_fast
    tokens = generate(spiking, ids, new_tokens, mask_strength)
    seconds = time.perf_counter() - start
    text = spiking.tokenizer.decode(tokens, skip_special_tokens=True)
    print(prompt + text)
    path = "spike-level simulator" if spiking_run else "fast path"
    print(f"[{len(tokens)} tokens in {seconds:.1f} s, {path}]")
    return {"prompt": prompt, "tokens": tokens, "text": text, "seconds": seconds}
