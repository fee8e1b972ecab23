"""`phasecode eval`: perplexity of the ANN and of the spiking model on the same windows."""

from __future__ import annotations

from pathlib import Path

from phasecode.conversion.store import load_spiking, read_spiking_metadata
from phasecode.errors import PhasecodeError
from phasecode.evaluation.perplexity import (
    check_seq_len,
    load_corpus,
    perplexity,
    token_windows,
)
from phasecode.models.loading import load_model

CORPORA = ("wikitext2", "c4")


def evaluate_job(
    artifact: Path,
    corpora: list[str],
    texts: list[Path],
    seq_len: int = 512,
    limit: int | None = None,
    progress: bool = True,
    batch_size: int = 4,
) -> dict:
    """ANN on its own windows (the standard protocol), then the spiking model on the same
    windows after its prefix; also the prepared ANN with that prefix, so the prefix's own
    effect is visible next to the conversion's."""
    for name in corpora:
        if name not in CORPORA:
            raise PhasecodeError(f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}")
    metadata = read_spiking_metadata(artifact)
    model, tokenizer = load_model(metadata["base_model"]["name"])
    sources = {name: load_corpus(name) for name in corpora}
    sources.update({str(path): load_corpus(str(path)) for path in texts})
    prefix_len = len(metadata["spec"]["prefix_tokens"])
    check_seq_len(model, seq_len, prefix_len)
    windows = {k: token_windows(tokenizer, text, seq_len, limit) for k, text in sources.items()}

    def score(prefix=None) -> dict:
        return {k: perplexity(model, w, prefix, batch_size, progress) for k, w in windows.items()}

    ann = score()
    spiking = load_spiking(artifact, model, tokenizer)
    with spiking.analog():
        analog = score(spiking.prefix)
    with spiking.coded():
        snn = score(spiking.prefix)
    report = {"ppl": {}, "seconds": {"ann": 0.0, "snn": 0.0}}
    for k, w in windows.items():
        report["ppl"][k] = {
            "ann": ann[k].ppl,
            "snn": snn[k].ppl,
            "ratio": snn[k].ppl / ann[k].ppl,
            "ann_prefixed": analog[k].ppl,
            "windows": len(w),
            "seq_len": seq_len,
        }
        report["seconds"]["ann"] += ann[k].seconds
        report["seconds"]["snn"] += snn[k].seconds
    report["artifact"] = str(artifact)
    report["spec"] = metadata["spec"]
    print(format_evaluation(report))
    return report


def format_evaluation(report: dict) -> str:
    spec = report["spec"]
    lines = [
        f"{spec['method']}  T={spec['timesteps']}  grains={spec['grains']}  "
        f"rotate={spec['rotate']}  prefix={list(spec['prefix_tokens'])}",
        f"{'corpus':<12}{'windows':>8}{'ANN':>10}{'ANN+prefix':>12}{'SNN':>10}{'SNN/ANN':>9}",
    ]
    for name, row in report["ppl"].items():
        lines.append(
            f"{name:<12}{row['windows']:>8}{row['ann']:>10.3f}{row['ann_prefixed']:>12.3f}"
            f"{row['snn']:>10.3f}{row['ratio']:>9.4f}"
        )
    s = report["seconds"]
    lines.append(f"time: ANN {s['ann']:.1f} s, SNN (fast path) {s['snn']:.1f} s")
    return "\n".join(lines)
