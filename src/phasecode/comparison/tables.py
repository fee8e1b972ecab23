"""Markdown tables shaped like the paper's Tables 1-2: a PPL block and an accuracy block.

Rows: the ANN (and, with weight quantization, the quantized ANN as prepared for conversion),
SpikeLLM marked as not reproduced, then every cell of the grid in grid order. A cell without a
record yet shows dashes; a failed cell shows its error.
"""

from __future__ import annotations

from phasecode.comparison.grid import Cell

TASK_COLUMNS = {  # the paper's column order
    "winogrande": "WinoGrande",
    "arc_challenge": "ArcC",
    "arc_easy": "ArcE",
    "piqa": "PiQA",
}
SPIKELLM = (
    "SpikeLLM (Xing et al., 2025) is not reproduced: it is a different pipeline (W4A8 weight "
    "quantization with saliency-based spiking, trained through the decoder layers), not a "
    "neuron setting of this conversion."
)
DASH = "—"
Entry = tuple[Cell, dict | None]  # a cell and its record (None: not run yet)


def markdown(meta: dict, ann: dict, entries: list[Entry]) -> str:
    """Both blocks, with a header saying what was measured and how."""
    quantized = any(cell.weight_bits is not None for cell, _ in entries)
    lead = ["Method", "T", *(["Weight Bit"] if quantized else []), "Time Cost"]
    rows = _rows(ann, entries)
    lines = [
        f"# Comparison on `{meta['model']}`",
        "",
        f"Base model fingerprint `{meta['fingerprint']}`. PPL: `{meta['corpus']}`, the first "
        f"{meta['windows']} windows of {meta['seq_len']} tokens (GPTQ protocol), the same "
        "windows for every row; spiking rows run after their prefix. Time cost: seconds of one "
        "conversion (calibration + neuron training) on this machine "
        f"({meta['threads']} torch threads). Accuracy: {_task_note(meta)}.",
        "",
        "## Perplexity",
        "",
        _header([*lead, "PPL"]),
    ]
    lines += [_line([*_lead(row, quantized), row["ppl"]]) for row in rows]
    lines += [
        "",
        "## Accuracy",
        "",
        _header([*lead, *TASK_COLUMNS.values(), "Avg. Acc"]),
    ]
    lines += [_line([*_lead(row, quantized), *row["acc"]]) for row in rows]
    lines += ["", f"¹ {SPIKELLM}"]
    failed = [(c, r) for c, r in entries if r is not None and r["status"] == "failed"]
    if failed:
        lines += ["", "Failed cells:", ""]
        lines += [f"- `{c.slug()}`: {_clean(r['error'])}" for c, r in failed]
    return "\n".join(lines) + "\n"


def _rows(ann: dict, entries: list[Entry]) -> list[dict]:
    """Every table row as {"name", "t", "bits", "cost", "ppl", "acc"}, values as text."""
    no_acc = [DASH] * (len(TASK_COLUMNS) + 1)
    rows = [_row("ANN", "N/A", None, "N/A", _ppl(ann.get("ppl")), _ann_acc(None, entries))]
    for bits in dict.fromkeys(c.weight_bits for c, _ in entries if c.weight_bits is not None):
        record = _first_ok(entries, bits)
        ppl = _ppl(record["ann_prepared_ppl"]) if record else DASH
        rows.append(_row("ANN (prepared)", "N/A", bits, "N/A", ppl, _ann_acc(bits, entries)))
    rows.append(_row("SpikeLLM", "8", 4, "not reproduced¹", DASH, no_acc))
    for cell, record in entries:
        ppl, acc, cost = DASH, no_acc, DASH
        if record is not None and record["status"] == "failed":
            ppl = f"failed: {_clean(record['error'])[:80]}"
        elif record is not None:
            ppl = _ppl(record["ppl"])
            acc = _accuracies(record["tasks"], "snn")
            cost = format_seconds(record["seconds"]["conversion"])
        rows.append(_row(cell.series(), str(cell.timesteps), cell.weight_bits, cost, ppl, acc))
    return rows


def _row(name: str, t: str, bits: int | None, cost: str, ppl: str, acc: list[str]) -> dict:
    return {"name": name, "t": t, "bits": bits, "cost": cost, "ppl": ppl, "acc": acc}


def _lead(row: dict, quantized: bool) -> list[str]:
    """The columns before the values; Weight Bit only when the grid quantizes weights."""
    width = ["full" if row["bits"] is None else str(row["bits"])] if quantized else []
    return [row["name"], row["t"], *width, row["cost"]]


def _first_ok(entries: list[Entry], bits: int | None) -> dict | None:
    return next(
        (r for c, r in entries if c.weight_bits == bits and r and r["status"] == "ok"), None
    )


def _ann_acc(bits: int | None, entries: list[Entry]) -> list[str]:
    """The ANN's accuracies as scored next to the first finished cell of that weight width."""
    record = _first_ok(entries, bits)
    return _accuracies(record["tasks"] if record else {}, "ann")


def _accuracies(tasks: dict, side: str) -> list[str]:
    """Per-task accuracy (%) in the paper's column order and their mean over the scored ones."""
    values = [tasks[name][side] if name in tasks else None for name in TASK_COLUMNS]
    scored = [v for v in values if v is not None]
    mean = sum(scored) / len(scored) if scored else None
    return [DASH if v is None else f"{v:.2f}" for v in [*values, mean]]


def _task_note(meta: dict) -> str:
    if not meta["tasks"]:
        return "no zero-shot tasks evaluated (add `--tasks`)"
    limit = f", first {meta['task_limit']} examples each" if meta["task_limit"] else ""
    return (
        f"zero-shot {', '.join(meta['tasks'])}{limit}, in percent (`phasecode.evaluation.tasks`; "
        "the ANN rows are the prepared ANN after the prefix); Avg. Acc is the mean of those scored"
    )


def format_seconds(seconds: float) -> str:
    """'12.3 s' under a minute, else the paper's '2m 01s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s"


def _ppl(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def _clean(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _header(columns: list[str]) -> str:
    return _line(columns) + "\n" + _line(["---"] * len(columns))


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
