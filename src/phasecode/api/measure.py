"""What conversion costs, measured on a model object: ``phasecode.perplexity``,
``phasecode.zero_shot``, ``phasecode.energy`` and ``phasecode.simulate``.

Each takes the model in its current mode: a ``SpikingModelForCausalLM`` is the spiking model,
or the prepared ANN inside ``with snn.analog():``; ``perplexity`` also takes any transformers
causal LM (the plain ANN).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from phasecode.api.energy import energy_report
from phasecode.api.simulate import sample_tokens, simulation_report
from phasecode.conversion.causal_lm import SpikingModelForCausalLM
from phasecode.conversion.handlers import Passthrough
from phasecode.errors import PhasecodeError
from phasecode.evaluation.perplexity import load_corpus, token_windows
from phasecode.evaluation.tasks import METRICS, check_tasks
from phasecode.inference.nll import EVAL_BATCH_SIZE, check_seq_len
from phasecode.inference.nll import perplexity as score_windows

# what a text argument may be: a corpus name (wikitext2, wikitext2-valid, c4), a file, or documents
Texts = str | Path | Sequence[str]


def perplexity(
    model: nn.Module,
    tokenizer,
    data: Texts = "wikitext2",
    windows: int | None = None,
    seq_len: int = 512,
    batch_size: int = EVAL_BATCH_SIZE,
    progress: bool = False,
) -> float:
    """Perplexity on the first ``windows`` non-overlapping windows of ``seq_len`` tokens of
    ``data`` (GPTQ protocol: rows joined by blank lines, no BOS; each window scored on its
    own, after the spiking model's prefix). ``data``: wikitext2 or c4 (test / validation
    sample in the shared data), a text file, or a list of documents."""
    ids = token_windows(tokenizer, _text(data), seq_len, windows)
    prefix = model.prefix if isinstance(model, SpikingModelForCausalLM) else None
    check_seq_len(model, seq_len, len(prefix) if prefix is not None else 0)
    return score_windows(model, ids, None, batch_size, progress).ppl


def zero_shot(
    model: SpikingModelForCausalLM,
    tokenizer=None,
    tasks: Sequence[str] = ("arc_easy", "arc_challenge", "piqa", "winogrande"),
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, float]:
    """Zero-shot accuracy in percent per task (arc_easy, arc_challenge, piqa, winogrande;
    lm-eval's acc_norm for ARC and PIQA, acc for WinoGrande, as the paper reports) on the
    first ``limit`` examples, scored by lm-eval on the staged task files."""
    from phasecode.evaluation.harness import PhasecodeLM
    from phasecode.evaluation.tasks import run_lm_eval, task_metrics

    _spiking(model, "zero_shot")
    if isinstance(tasks, str):
        tasks = [tasks]
    names = check_tasks(list(tasks), limit)
    lm = PhasecodeLM(spiking=model, batch_size=batch_size, progress=progress)
    metrics = task_metrics(run_lm_eval(lm, names, limit, progress), names)
    return {name: metrics[name]["value"] for name in names}


def energy(
    model: SpikingModelForCausalLM,
    tokenizer=None,
    tokens: int = 512,
    mask_strength: int = 3,
    costs: str = "45nm-fp32",
    windows: int = 8,
    seq_len: int = 512,
    text: str = "wikitext2",
    progress: bool = False,
) -> dict:
    """Spikes, operations and energy of the spiking network on ``tokens`` tokens of ``text``,
    without and with spike masking of ``mask_strength``, against the ANN's on the same
    tokens, with the perplexity ratios on ``windows`` windows: the `energy --json` dict. The
    ANN's perplexity is that of the prepared weights without the prefix (the base model up to
    rounding: every rotation is exact)."""
    spiking = _spiking(model, "energy").spiking
    ids = sample_tokens(spiking, tokens, text)
    ppl_windows = token_windows(spiking.tokenizer, load_corpus(text), seq_len, windows)
    with spiking.surgery(Passthrough()):
        ann = score_windows(spiking.model, ppl_windows, None, 1, progress).ppl
    with torch.no_grad():
        return energy_report(spiking, ids, ppl_windows, ann, mask_strength, costs, progress)


def simulate(
    model: SpikingModelForCausalLM,
    tokenizer=None,
    tokens: int = 64,
    check: bool = True,
    mask_strength: int = 0,
    text: str | None = None,
) -> dict:
    """Run ``tokens`` tokens of ``text`` (default: WikiText-2 test) through the spike-level
    simulator and, with ``check``, compare its logits with the fast path: the `simulate
    --json` dict. The check is exact (≤ 1e-9) for a model loaded with ``float64=True``; in
    float32 it reports the rounding floor no simulator can beat and is judged against it."""
    spiking = _spiking(model, "simulate").spiking
    ids = sample_tokens(spiking, tokens, text)
    with torch.no_grad():
        return simulation_report(spiking, ids, check, mask_strength)


def _spiking(model, what: str) -> SpikingModelForCausalLM:
    if not isinstance(model, SpikingModelForCausalLM):
        raise PhasecodeError(
            f"{what} needs a converted model (phasecode.convert or phasecode.load), "
            f"got {type(model).__name__}"
        )
    return model


def _text(data: Texts) -> str:
    if isinstance(data, (str, Path)):
        return load_corpus(str(data))
    texts = list(data)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise PhasecodeError("data must be a corpus name, a file or a list of strings")
    return "\n\n".join(texts)


__all__ = ["perplexity", "zero_shot", "energy", "simulate", "METRICS"]
