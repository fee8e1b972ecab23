"""PPL against T per method (log y), with the ANN and single-T baselines as horizontal lines."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from phasecode.artifacts import written_atomically
from phasecode.comparison.tables import Entry


def plot_ppl(path: Path, ann_ppl: float, entries: list[Entry], timesteps: list[int]) -> None:
    """One line per series over the grid's T values; a cell at another T (TTFS at 128) is drawn
    as a dotted horizontal line so the T axis stays readable. Cells without a result are left
    out. Uses the Agg canvas through ``Figure`` (no pyplot, no global backend state)."""
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    series: dict[str, list[tuple[int, float]]] = {}
    for cell, record in entries:
        if record is None or record["status"] != "ok":
            continue
        name = cell.series() + (f" W{cell.weight_bits}" if cell.weight_bits else "")
        if cell.timesteps in timesteps:
            series.setdefault(name, []).append((cell.timesteps, record["ppl"]))
        else:
            ax.axhline(record["ppl"], linestyle=":", color="gray")
            ax.annotate(f"{name} (T={cell.timesteps})", (min(timesteps), record["ppl"]))
    for name, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    ax.axhline(ann_ppl, linestyle="--", color="black", label="ANN")
    ax.set_yscale("log")
    ax.set_xticks(sorted(timesteps))
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("perplexity")
    ax.legend(fontsize="small")
    with written_atomically(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
