"""The energy / perplexity front: which conversions to sweep, and their table and plot.

Every point is one conversion fitted from the same calibration and measured the same way:
total and compute (MAC+AC) energy relative to the ANN by the spike-level simulator, and the
fast path's perplexity relative to the ANN. Families of points are drawn as separate curves:
the wave-1 neuron over T, that neuron with spike masking, LAS over T, the signed-digit neuron
over T, the signed-digit neuron under energy budgets (a spike price found in training at T, or
a knapsack's per-site T with spikes priced at its price), and the
signed-digit neuron trained on the Fisher-weighted objective over T, and the signed-digit
neuron whose attention probabilities keep their mass (``--probs-bias``) over T.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from phasecode.artifacts import written_atomically
from phasecode.comparison.tables import format_seconds
from phasecode.settings import PROBS_BIAS


@dataclass(frozen=True)
class Point:
    """One conversion of the front."""

    curve: str
    method: str
    code: str
    timesteps: int
    mask: int = 0
    budget: float | None = None
    objective: str = "mse"
    probs_bias: float = 0.0
    budget_mode: str = "price"  # EnergyBudget.mode

    @property
    def key(self) -> str:
        budget = ""
        if self.budget is not None:
            word = "budget" if self.budget_mode == "knapsack" else "price"
            budget = f"-{word}{self.budget:g}"
        objective = "" if self.objective == "mse" else f"-{self.objective}"
        bias = f"-probsbias{self.probs_bias:g}" if self.probs_bias else ""
        return (
            f"{self.method}-{self.code}-T{self.timesteps}-mask{self.mask}{budget}{objective}{bias}"
        )

    @property
    def label(self) -> str:
        if self.budget is not None:
            return f"budget {self.budget:g}"
        return f"T={self.timesteps}" + (f" mask {self.mask}" if self.mask else "")


def front_points(
    timesteps: int,
    uniform: list[int],
    masks: list[int],
    budgets: list[float],
    fisher: list[int] = (),
    unbiased: list[int] = (),
    unbiased_budgets: list[float] = (),
    knapsack_budgets: list[float] = (),
) -> list[Point]:
    """The sweep: the ``uniform`` T values for the uniform curves, the given masking
    strengths and budgets (price mode; ``knapsack_budgets``: knapsack mode) at ``timesteps``,
    the ``fisher`` T values for the Fisher curve and the ``unbiased`` ones for the curve with
    ``PROBS_BIAS`` on the probabilities (and the ``unbiased_budgets`` with it under energy
    budgets)."""
    points = [Point("wave-1 neuron, uniform T", "mgpc", "binary", t) for t in uniform]
    points += [
        Point("wave-1 neuron, masking", "mgpc", "binary", timesteps, m) for m in masks if m > 0
    ]
    points += [Point("LAS, uniform T", "las", "binary", t) for t in uniform]
    points += [Point("signed-digit, uniform T", "mgpc", "signed-digit", t) for t in uniform]
    points += [
        Point(f"signed-digit + energy budget (spike price, T={timesteps})", "mgpc",
              "signed-digit", timesteps, 0, b)
        for b in budgets
    ]  # fmt: skip
    points += [
        Point("signed-digit + energy budget (knapsack, T per site)", "mgpc", "signed-digit",
              timesteps, 0, b, budget_mode="knapsack")
        for b in knapsack_budgets
    ]  # fmt: skip
    points += [
        Point("signed-digit, Fisher objective", "mgpc", "signed-digit", t, objective="fisher")
        for t in fisher
    ]
    points += [
        Point(
            f"signed-digit, probabilities unbiased (κ={PROBS_BIAS:g})",
            "mgpc",
            "signed-digit",
            t,
            probs_bias=PROBS_BIAS,
        )
        for t in unbiased
    ]
    points += [
        Point(
            f"signed-digit + energy budget, probabilities unbiased (κ={PROBS_BIAS:g})",
            "mgpc",
            "signed-digit",
            timesteps,
            budget=b,
            probs_bias=PROBS_BIAS,
        )
        for b in unbiased_budgets
    ]
    return points


def measured(points: list[Point], records: dict[str, dict]) -> list[dict]:
    """The records of the measured points, in sweep order, with their curve and label."""
    rows = []
    for point in points:
        record = records.get(point.key)
        if record is not None and record.get("status") == "ok":
            rows.append(record | {"curve": point.curve, "label": point.label})
    return rows


def front_table(rows: list[dict]) -> list[str]:
    """Markdown table lines, one per measured point (``measured``)."""
    lines = [
        "| curve | point | PPL ratio | total energy ratio | compute ratio | ACs / ANN MAC "
        "| firing rate | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['curve']} | {r['label']} | {r['ppl_ratio']:.4f} | {r['total_ratio']:.3f} "
            f"| {r['compute_ratio']:.3f} | {r['acs_per_mac']:.2f} | {r['firing_rate']:.3f} "
            f"| {format_seconds(r['seconds'])} |"
        )
    return lines


def plot_front(path: Path, rows: list[dict]) -> None:
    """Total energy ratio (left) and compute ratio (right) against PPL ratio, one curve per
    family (``measured`` rows); the ANN is at (1, 1)."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    curves: dict[str, list[dict]] = {}
    for row in rows:
        curves.setdefault(row["curve"], []).append(row)
    for ax, field, name in zip(
        axes, ("total_ratio", "compute_ratio"), ("total", "compute (MAC+AC)"), strict=True
    ):
        for curve, rows in curves.items():
            rows = sorted(rows, key=lambda r: r["ppl_ratio"])
            ax.plot([r["ppl_ratio"] for r in rows], [r[field] for r in rows], "o-", label=curve)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.plot([1.0], [1.0], "k*", markersize=10, label="ANN")
        ax.set_xscale("log")
        ax.set_xlabel("perplexity ratio to the ANN (log)")
        ax.set_ylabel(f"{name} energy ratio to the ANN")
    axes[0].legend(fontsize="small")
    with written_atomically(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
