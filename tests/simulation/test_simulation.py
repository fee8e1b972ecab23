"""The spike-level simulator equals the fast path, for every architecture."""

from __future__ import annotations

import pytest
import torch
from helpers import CONVERTIBLE_SIZES, write_calibration
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from phasecode.api.simulate import simulation_cost
from phasecode.conversion.convert import SpikingModel, convert
from phasecode.inference.prefix_choice import PrefixRequest
from phasecode.jobs.generate import greedy_fast, greedy_spiking
from phasecode.models.precision import to_float64
from phasecode.settings import FitSettings, SamplingSettings, TrainConfig
from phasecode.simulation.counting import Counter
from phasecode.simulation.network import SpikingSimulator

CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
FAST_TRAINING = TrainConfig(rounds=2, search_steps=2, search_samples=64)


def _float64_model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    config = CONFIGS[arch](**CONVERTIBLE_SIZES)
    if arch == "qwen2":
        config.attention_bias = True
    return to_float64(AutoModelForCausalLM.from_config(config)).eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def spiking(request, tmp_path_factory, tiny_tokenizer) -> SpikingModel:
    calibration = write_calibration(tmp_path_factory.mktemp("sim") / "calib.jsonl")
    sampling = SamplingSettings(samples=64, calibration=calibration, sequences=4, seq_len=32)
    model = _float64_model(request.param)
    fit = FitSettings("mgpc", 4, 2, FAST_TRAINING)
    # a given prefix, so its cached keys go through the per-head rotation too
    prefix = PrefixRequest("ids", ids=(0, 7, 9))
    spiking = convert(model, tiny_tokenizer, fit, sampling, progress=False, prefix=prefix)
    assert spiking.head_rotation is not None and spiking.prefix is not None
    return spiking


def _tokens(length: int = 12) -> torch.Tensor:
    return torch.randint(2, 258, (2, length), generator=torch.Generator().manual_seed(3))


def _fast_logits(spiking: SpikingModel, tokens: torch.Tensor, mask: int = 0) -> torch.Tensor:
    with spiking.coded(mask):
        return spiking.logits(tokens)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_simulator_equals_fast_path_float64(spiking):
    tokens = _tokens()
    simulated = SpikingSimulator(spiking).forward(tokens)
    fast = _fast_logits(spiking, tokens)
    assert _relative(simulated, fast) <= 1e-9


def test_chunking_does_not_change_the_result(spiking):
    tokens = _tokens()
    whole = SpikingSimulator(spiking).forward(tokens)
    chunked = SpikingSimulator(spiking, token_chunk=5, attention_elements=1).forward(tokens)
    assert _relative(chunked, whole) <= 1e-12


def test_masked_simulator_equals_masked_fast_path(spiking):
    tokens = _tokens()
    simulated = SpikingSimulator(spiking, mask_strength=2).forward(tokens)
    assert _relative(simulated, _fast_logits(spiking, tokens, mask=2)) <= 1e-9
    assert _relative(simulated, _fast_logits(spiking, tokens)) > 1e-6  # masking changes values


def test_simulator_equals_fast_path_with_a_sliding_window(tmp_path, tiny_tokenizer):
    """Blocks of query rows then see a band of keys that starts after the first."""
    torch.manual_seed(0)
    config = MistralConfig(**CONVERTIBLE_SIZES, sliding_window=5)
    model = to_float64(AutoModelForCausalLM.from_config(config)).eval()
    sampling = SamplingSettings(
        samples=64, calibration=write_calibration(tmp_path / "c.jsonl"), sequences=4, seq_len=32
    )
    fit = FitSettings("mgpc", 4, 2, FAST_TRAINING)
    spiking = convert(model, tiny_tokenizer, fit, sampling, progress=False)
    tokens = _tokens(16)
    fast = _fast_logits(spiking, tokens)
    for elements in (1, 2 * 2 * 16 * 3):  # one query row, three rows per block
        simulated = SpikingSimulator(spiking, attention_elements=elements).forward(tokens)
        assert _relative(simulated, fast) <= 1e-9


def test_counts_cover_every_site(spiking):
    counter = Counter()
    SpikingSimulator(spiking, counter=counter).forward(_tokens())
    sites = {key for key, count in counter.snn.items() if count.neuron_steps > 0}
    assert len(sites) == len(spiking.sites)
    snn, ann = counter.totals("snn"), counter.totals("ann")
    assert 0 < snn.spikes < snn.neuron_steps
    assert snn.ac > ann.ac and snn.mac < ann.mac


def test_counts_add_up_over_chunks_and_attention_blocks(spiking):
    whole, chunked = Counter(), Counter()
    SpikingSimulator(spiking, counter=whole).forward(_tokens())
    SpikingSimulator(spiking, counter=chunked, token_chunk=5, attention_elements=1).forward(
        _tokens()
    )
    assert dict(chunked.snn) == dict(whole.snn) and dict(chunked.ann) == dict(whole.ann)


def test_simulation_cost_reports_time_and_memory(spiking):
    cost = simulation_cost(spiking, _tokens(), repeats=2)
    assert cost["tokens"] == 12 and cost["timesteps"] == spiking.table.timesteps
    for part in ("simulator", "ann"):
        assert cost[part]["seconds"] > 0 and cost[part]["cpu_seconds"] > 0
        assert cost[part]["peak_gib"] >= 0
    ratio = cost["simulator"]["seconds"] / (cost["timesteps"] * cost["ann"]["seconds"])
    assert cost["simulator_over_T_ann"] == ratio


def test_greedy_generation_matches_with_a_kv_cache(spiking):
    prompt = _tokens(6)[:1]
    fast = greedy_fast(spiking, prompt, 8)
    assert greedy_spiking(spiking, prompt, 8) == fast
    # the cache is used: continuing token by token equals one pass over the whole sequence
    whole = torch.cat([prompt, torch.tensor([fast[:-1]])], 1)
    logits = SpikingSimulator(spiking).forward(whole)
    assert logits[0, prompt.shape[1] - 1 :].argmax(-1).tolist() == fast
