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

from phasecode.coding.neuron import mask_window
from phasecode.conversion.causal_lm import SpikingModelForCausalLM, greedy_generate
from phasecode.conversion.convert import SpikingModel
from phasecode.conversion.store import load_spiking, read_spiking_metadata
from phasecode.errors import PhasecodeError
from phasecode.models.placement import CPU, Placement
from phasecode.simulation.network import SpikingSimulator


def greedy_fast(
    spiking: SpikingModel | SpikingModelForCausalLM,
    prompt: torch.Tensor,
    new_tokens: int,
    mask_strength: int = 0,
    analog: bool = False,
) -> list[int]:
    """Greedy continuation of ``prompt`` [1, S] by the fast path (``analog``: by the
    prepared ANN, for a side-by-side comparison): the spiking model's own ``generate``."""
    model = spiking
    if not isinstance(model, SpikingModelForCausalLM):
        model = SpikingModelForCausalLM(spiking)
    with model.analog() if analog else model.coded(mask_strength):
        return greedy_generate(model, prompt, new_tokens, model.tokenizer.eos_token_id)


def greedy_ann(model, prompt: torch.Tensor, new_tokens: int, eos: int | None) -> list[int]:
    """Greedy continuation by a plain, unconverted model (its own attention, no prefix): what
    the ANN costs, to compare the spiking model's speed with."""
    return greedy_generate(model, prompt, new_tokens, eos)


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


def check_length_early(metadata: dict, prompt: str, new_tokens: int, base_model: str | None):
    """The context-length check of ``encode_prompt`` with the base model's tokenizer and
    config only, so that a prompt that cannot fit fails before the weights load (skipped
    when they cannot be read cheaply: ``encode_prompt`` checks again after loading)."""
    from transformers import AutoConfig, AutoTokenizer

    from phasecode.models.devices import DTYPES
    from phasecode.models.gguf import gguf_cache_path
    from phasecode.models.resolve import locate

    try:
        source = locate(base_model or metadata["base_model"]["name"])
        location = source.location
        if source.kind == "gguf":
            dtype = DTYPES[metadata["base_model"].get("dtype", "float32")]
            location = gguf_cache_path(Path(location), dtype)
        tokenizer = AutoTokenizer.from_pretrained(location)
        limit = getattr(AutoConfig.from_pretrained(location), "max_position_embeddings", None)
    except Exception:  # noqa: BLE001 - only a shortcut; the check after loading is the rule
        return
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    _check_fits(len(ids), new_tokens, len(metadata["spec"]["prefix_tokens"]), limit)


def _check_fits(prompt: int, new_tokens: int, prefix: int, limit: int | None) -> None:
    if limit is not None and prompt + new_tokens + prefix > limit:
        raise PhasecodeError(
            f"the prompt ({prompt} tokens) and --max-new-tokens {new_tokens} after the "
            f"prefix ({prefix} tokens) need {prompt + new_tokens + prefix} positions; the "
            f"model has {limit}: shorten the prompt or ask for fewer tokens"
        )


def encode_prompt(spiking: SpikingModel, prompt: str, new_tokens: int) -> torch.Tensor:
    """[1, S] prompt ids, checked to fit the context with the prefix and the new tokens."""
    check_request(prompt, new_tokens)
    ids = spiking.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    prefix = len(spiking.prefix) if spiking.prefix is not None else 0
    _check_fits(
        len(ids), new_tokens, prefix, getattr(spiking.model.config, "max_position_embeddings", None)
    )
    return torch.tensor([ids], device=next(spiking.model.parameters()).device)


def generate_job(
    artifact: Path,
    prompt: str,
    new_tokens: int = 32,
    spiking_run: bool = False,
    float64: bool = False,
    mask_strength: int = 0,
    placement: Placement = CPU,
    analog: bool = False,
    base_model: str | None = None,
) -> dict:
    """Generate and print the continuation; with ``analog`` also the prepared ANN's."""
    metadata = read_spiking_metadata(artifact)
    mask_window(metadata["spec"]["timesteps"], mask_strength)
    check_request(prompt, new_tokens)  # before the model loads
    check_length_early(metadata, prompt, new_tokens, base_model)
    spiking = load_spiking(
        artifact,
        float64=float64,
        device=placement.device,
        dtype=placement.dtype,
        base_model=base_model,
    )
    ids = encode_prompt(spiking, prompt, new_tokens)
    start = time.perf_counter()
    generate = greedy_spiking if spiking_run else greedy_fast
    tokens = generate(spiking, ids, new_tokens, mask_strength)
    seconds = time.perf_counter() - start
    text = spiking.tokenizer.decode(tokens, skip_special_tokens=True)
    path = "spike-level simulator" if spiking_run else "fast path"
    report = {
        "prompt": prompt,
        "tokens": tokens,
        "text": text,
        "seconds": seconds,
        "tokens_per_s": len(tokens) / seconds,
    }
    if analog:
        start = time.perf_counter()
        ann = greedy_fast(spiking, ids, new_tokens, analog=True)
        report["ann_tokens_per_s"] = len(ann) / (time.perf_counter() - start)
        report["ann_text"] = spiking.tokenizer.decode(ann, skip_special_tokens=True)
        print(f"ANN: {prompt}{report['ann_text']}")
        print(f"SNN: {prompt}{text}")
    else:
        print(prompt + text)
    print(
        f"[{len(tokens)} tokens in {seconds:.1f} s, {report['tokens_per_s']:.2f} tokens/s, {path}]"
    )
    if analog:
        print(f"[prepared ANN: {report['ann_tokens_per_s']:.2f} tokens/s]")
    return report
