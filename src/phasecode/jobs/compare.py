"""`phasecode compare`: convert a model once per grid cell and evaluate every cell alike.

Every cell is a full conversion in memory (``comparison.grid``); its WikiText-2 perplexity on
the same windows as the ANN, optionally its zero-shot accuracy, and its time cost are written
to DIR/results.json as soon as it finishes, so a rerun only does what is missing. A failing
cell is recorded with its error and the grid goes on; the caller exits non-zero afterwards.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from phasecode.artifacts import write_text_atomic
from phasecode.cache.fingerprint import model_fingerprint
from phasecode.comparison.evaluate import evaluate_cell, task_scorer
from phasecode.comparison.grid import calibrations, cell_id, digest
from phasecode.comparison.settings import CompareSettings
from phasecode.comparison.store import ResultStore
from phasecode.comparison.tables import markdown
from phasecode.evaluation.perplexity import load_corpus, token_windows
from phasecode.inference.nll import perplexity
from phasecode.models.placement import load_placed
from phasecode.outputs import claim_dir

ANN_CONTEXT = ("model", "fingerprint", "corpus", "seq_len", "windows")  # what the ANN row needs


def compare_job(settings: CompareSettings, out: Path, progress: bool = True) -> dict:
    """Run the missing cells, write results.json, table.md and ppl_vs_T.png; return a summary
    {"cells": n, "failed": {cell id: error}}."""
    tasks, score = task_scorer(settings.tasks, settings.task_limit)
    settings = replace(settings, tasks=tasks)
    store = ResultStore(out / "results.json")
    claim_dir(out)
    corpus = load_corpus(settings.corpus)
    model, tokenizer = load_placed(settings.model, settings.placement)
    windows = token_windows(tokenizer, corpus, settings.seq_len, settings.limit)
    context = _context(settings, model_fingerprint(model), len(windows))
    ann_context = {k: v for k, v in context.items() if k in ANN_CONTEXT}
    ann_key = f"ann-{digest(ann_context)}"
    if not store.done(ann_key):
        ann = perplexity(model, windows, batch_size=settings.batch_size, progress=False)
        store.put(ann_key, {"status": "ok", "ppl": ann.ppl, "seconds": ann.seconds})
    keys = {cell: cell_id(cell, context) for cell in settings.cells}
    todo = [cell for cell in settings.cells if not store.done(keys[cell])]
    fresh = [(model, tokenizer)]  # the first group converts the model already loaded
    del model

    def load():
        return fresh.pop() if fresh else load_placed(settings.model, settings.placement)

    prepared: dict[tuple, float] = {}  # prepared-ANN perplexity per calibration group
    bar = tqdm(total=len(todo), desc="compare", unit="cell", disable=not progress)
    for cell, calibrated in calibrations(load, todo, settings.sampling):
        bar.set_postfix_str(cell.slug())
        record = evaluate_cell(cell, calibrated, settings, windows, score, prepared)
        store.put(keys[cell], record)
        _write_table(out, store, settings, context, ann_key, keys)
        bar.update()
    bar.close()
    entries = _write_table(out, store, settings, context, ann_key, keys)
    from phasecode.comparison.plot import plot_ppl  # matplotlib only when there is a table

    plot_ppl(out / "ppl_vs_T.png", store.get(ann_key)["ppl"], entries, list(settings.timesteps))
    failed = {keys[c]: r["error"] for c, r in entries if r and r["status"] == "failed"}
    print((out / "table.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'table.md'} and {out / 'ppl_vs_T.png'}")
    return {"cells": len(entries), "failed": failed}


def _context(settings: CompareSettings, fingerprint: str, windows: int) -> dict:
    """What every cell id depends on besides the cell itself."""
    return {
        "model": settings.model,
        "fingerprint": fingerprint,
        "sampling": asdict(settings.sampling),
        "train": {k: v for k, v in asdict(settings.train).items() if k != "mode"},
        "corpus": settings.corpus,
        "seq_len": settings.seq_len,
        "windows": windows,
        "tasks": sorted(settings.tasks),
        "task_limit": settings.task_limit,
    }


def _write_table(out, store, settings, context, ann_key, keys) -> list:
    """table.md from the records of this grid's cells (in grid order); returns the entries."""
    entries = [(cell, store.get(keys[cell])) for cell in settings.cells]
    meta = {
        **context,
        "threads": torch.get_num_threads(),
        "tasks": list(settings.tasks),
    }
    write_text_atomic(out / "table.md", markdown(meta, store.get(ann_key), entries))
    return entries
