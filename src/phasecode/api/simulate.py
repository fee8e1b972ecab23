"""Run the spiking network and prove the fast path equal (``phasecode.simulate``, the work of
`phasecode simulate DIR --check`).

The same tokens (the start of WikiText-2 test, or a given text) go through the fast path
(analog model with SN(x) at every site) and through the spike-level simulator; the job
reports the largest logit difference, whether every argmax agrees, both times next to the
ANN's, and the simulator's peak memory (``measured``; ``simulation_cost`` gives a benchmark the
same numbers without the check).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from phasecode.conversion.convert import SpikingModel
from phasecode.errors import PhasecodeError
from phasecode.evaluation.perplexity import load_corpus, token_windows
from phasecode.inference.nll import check_seq_len
from phasecode.models.adapters import adapter_for
from phasecode.simulation.counting import Counter
from phasecode.simulation.network import TOKEN_CHUNK, SpikingSimulator

RELATIVE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}
Result = TypeVar("Result")


def sample_tokens(spiking: SpikingModel, tokens: int, text: str | None = None) -> torch.Tensor:
    """[1, tokens] from the start of the corpus, checked against the model's context."""
    if tokens < 1:
        raise PhasecodeError(f"--tokens must be >= 1, got {tokens}")
    prefix = len(spiking.prefix) if spiking.prefix is not None else 0
    check_seq_len(spiking.model, tokens, prefix)
    ids = token_windows(spiking.tokenizer, load_corpus(text or "wikitext2"), tokens, 1)
    return ids.to(next(spiking.model.parameters()).device)


def fast_logits(spiking: SpikingModel, tokens: torch.Tensor, mask_strength: int = 0):
    with spiking.coded(mask_strength):
        return spiking.logits(tokens)


def ann_seconds(spiking: SpikingModel, tokens: torch.Tensor) -> float:
    """Time of the ANN's own forward over the same tokens, after the prefix: the model with no
    surgery (transformers' default attention; the rotation folded into its weights costs
    nothing), i.e. what the original ANN costs."""
    start = time.perf_counter()
    spiking.logits(tokens)
    return time.perf_counter() - start


def peak_rss_gib() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _status_kib(field: str) -> int | None:
    """A memory field of /proc/self/status (Linux), in KiB; None where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Lower the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0), so that the
    next peak is the measured call's own, not one reached before it (loading the model)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def measured(fn: Callable[[], Result]) -> tuple[Result, dict]:
    """``fn()`` and what it cost: wall and CPU seconds (CPU time is steadier on a shared
    machine), and ``peak_gib``, how far its peak resident memory rose above what the process
    held before the call. Where the kernel's peak mark cannot be reset, the process's lifetime
    peak stands in, which hides a peak lower than an earlier one (then ``peak_gib`` is 0)."""
    exact = _reset_peak_rss()
    before = _status_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    cost = {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cost["peak_gib"] = max(peak - before, 0) / 2**20
    cost["peak_exact"] = exact
    return result, cost


def simulation_cost(
    spiking: SpikingModel, tokens: torch.Tensor, repeats: int = 3, mask_strength: int = 0
) -> dict:
    """What simulating ``tokens`` costs next to the ANN, for benchmarks: the simulator's
    ``measured`` cost, the ANN's fastest of ``repeats`` forwards over the same tokens, and the
    ratio the issue tracks, simulator / (T × ANN), in wall and in CPU seconds. The simulator
    runs first, so that no memory the ANN freed (and the process kept) hides its peak."""
    _, simulator = measured(lambda: SpikingSimulator(spiking, mask_strength).forward(tokens))
    anns = [measured(lambda: spiking.logits(tokens))[1] for _ in range(repeats)]
    ann = min(anns, key=lambda cost: cost["cpu_seconds"])
    timesteps = spiking.table.timesteps
    return {
        "tokens": tokens.shape[1],
        "timesteps": timesteps,
        "simulator": simulator,
        "ann": ann,
        "simulator_over_T_ann": simulator["seconds"] / (timesteps * ann["seconds"]),
        "cpu_simulator_over_T_ann": simulator["cpu_seconds"] / (timesteps * ann["cpu_seconds"]),
    }


def simulate(
    spiking: SpikingModel,
    tokens: torch.Tensor,
    mask_strength: int = 0,
    counter: Counter | None = None,
    token_chunk: int = TOKEN_CHUNK,
) -> tuple[torch.Tensor, float]:
    """Simulator logits for ``tokens`` (after the prefix) and the seconds it took."""
    simulator = SpikingSimulator(spiking, mask_strength, counter, token_chunk)
    start = time.perf_counter()
    logits = simulator.forward(tokens)
    return logits, time.perf_counter() - start


@torch.no_grad()
def rounding_sensitivity(spiking: SpikingModel, tokens: torch.Tensor, reference: torch.Tensor):
    """The fast path's largest relative logit change when the embeddings move by ±1 ulp.

    This is the spiking network's own numerical floor: a rounding-level change of any input
    crosses a few thresholds, and each flipped spike moves its neuron by a whole d(t), which
    flips more downstream. In float64 it is ~0; in float32 it is percent-level on real models.
    """
    adapter = adapter_for(spiking.model)
    embedding = adapter.module(spiking.model, adapter.embed).weight
    original = embedding.data
    ulp = torch.finfo(original.dtype).eps
    change = 0.0
    try:
        for sign in (1, -1):
            embedding.data = original * (1 + sign * ulp)
            moved = fast_logits(spiking, tokens)
            change = max(change, _relative(moved, reference))
    finally:
        embedding.data = original
    return change


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def simulation_report(
    spiking: SpikingModel,
    ids: torch.Tensor,
    check: bool = True,
    mask_strength: int = 0,
) -> dict:
    """Simulate ``ids`` [1, tokens]; with ``check``, compare with the fast path.

    In float64 the check requires relative logit agreement ≤ 1e-9 and identical argmax. In
    float32 it also measures ``rounding_sensitivity`` and accepts a difference up to
    max(1e-4, 2 × that floor): below the floor no simulator could match bit-for-bit.
    """
    ann_seconds(spiking, ids)  # warm-up: first calls pay for allocation
    ann = ann_seconds(spiking, ids)
    (simulated, seconds), simulation = measured(lambda: simulate(spiking, ids, mask_strength))
    report = {
        "tokens": ids.shape[1],
        "dtype": str(simulated.dtype).removeprefix("torch."),
        "timesteps": spiking.table.timesteps,
        "mask_strength": mask_strength,
        "seconds": {"ann": ann, "simulator": seconds},
        "simulator_over_T_ann": seconds / (spiking.table.timesteps * ann),
        "peak_rss_gib": peak_rss_gib(),
        "simulator_peak_gib": simulation["peak_gib"],
    }
    if check:
        start = time.perf_counter()
        fast = fast_logits(spiking, ids, mask_strength)
        report["seconds"]["fast_path"] = time.perf_counter() - start
        relative = _relative(simulated, fast)
        tolerance = RELATIVE_TOLERANCE[torch.float64]
        floor = None
        if fast.dtype != torch.float64:
            floor = rounding_sensitivity(spiking, ids, fast)
            tolerance = max(RELATIVE_TOLERANCE[torch.float32], 2 * floor)
        same_argmax = bool((simulated.argmax(-1) == fast.argmax(-1)).all())
        report["check"] = {
            "max_abs_difference": (simulated - fast).abs().max().item(),
            "max_relative_difference": relative,
            "rounding_sensitivity": floor,
            "tolerance": tolerance,
            "argmax_agreement": (simulated.argmax(-1) == fast.argmax(-1)).float().mean().item(),
            "passed": relative <= tolerance and (same_argmax or floor is not None),
        }
    return report
