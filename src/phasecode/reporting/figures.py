"""The report's figures. Each takes plain data (artifact tensors and metadata, parsed JSON),
writes one PNG and returns its path, or returns None when its data is absent, so a report of
an older or partial artifact still renders everything it can.

Figures are drawn on the Agg canvas through ``Figure`` (no pyplot, no global backend state),
as ``comparison/plot.py`` does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator
from torch import Tensor

from phasecode.artifacts import written_atomically
from phasecode.calibration.histograms import SiteHistogram, site_histogram
from phasecode.coding.table import CodeTable
from phasecode.models.sites import site_kind
from phasecode.reporting.levels import nearest, sn, transfer, uniform_levels

KINDS = ("qkv", "q", "k", "v", "probs", "o", "gate_up", "silu", "up", "down", "lm_head")
PHASE_COLORS = {"threshold": "tab:red", "base": "tab:blue", "joint": "tab:purple"}
PHASE_LABELS = {"threshold": "h, θ steps (surrogate)", "base": "B steps", "joint": "joint steps"}
DPI = 110
SUBSAMPLES = 16  # points per histogram bin when integrating a quantizer's error over the bin
MAGNITUDE_BINS = 100  # even |x| bins of Fig. 3 (the paper's Fig. 1b uses 100 groups)


# --------------------------------------------------------------------------------- helpers


def kind_color(kind: str) -> str:
    """One stable colour per site kind across all figures."""
    palette = [f"C{i}" for i in range(10)]
    return "black" if kind not in KINDS[:-1] else palette[KINDS.index(kind) % 10]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    """The figure as a PNG, written atomically (no cut-off file after a kill or a full disk)."""
    path = Path(path)
    with written_atomically(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def code_table(tensors: dict[str, Tensor], metadata: dict) -> CodeTable | None:
    """The artifact's code table, or None if it does not hold one."""
    try:
        return CodeTable.from_tensors(tensors, metadata.get("allocation"))
    except (KeyError, ValueError, RuntimeError):
        return None


def site_rows(metadata: dict) -> dict[str, dict]:
    """The conversion report's per-site rows by site name (empty without a report)."""
    report = metadata.get("report") or {}
    return {row["name"]: row for row in report.get("sites", []) if "name" in row}


def _kinds_in(sites: list[str]) -> list[str]:
    return _ordered_kinds(site_kind(s) for s in sites)


def _ordered_kinds(kinds) -> list[str]:
    """Distinct site kinds in the order a token meets them."""
    seen = dict.fromkeys(kinds)
    return sorted(seen, key=lambda k: (KINDS.index(k) if k in KINDS else len(KINDS), k))


def representative_sites(sites: list[str], rows: dict[str, dict]) -> list[int]:
    """Per kind, the site of median Lloyd-Max ratio (the middle layer without a report)."""
    picks = []
    for kind in _kinds_in(sites):
        members = [i for i, s in enumerate(sites) if site_kind(s) == kind]
        scored = [i for i in members if "ratio" in rows.get(sites[i], {})]
        if scored:
            scored.sort(key=lambda i: rows[sites[i]]["ratio"])
            picks.append(scored[(len(scored) - 1) // 2])
        else:
            picks.append(members[(len(members) - 1) // 2])
    return picks


def worst_sites(sites: list[str], rows: dict[str, dict], count: int) -> list[int]:
    """The ``count`` sites with the largest held-out MSE ÷ Lloyd-Max ratio."""
    scored = [i for i, s in enumerate(sites) if _finite(rows.get(s, {}).get("ratio"))]
    scored.sort(key=lambda i: rows[sites[i]]["ratio"], reverse=True)
    return scored[:count]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _asinh_ticks(lo: float, hi: float, scale: float, count: int = 7) -> list[float]:
    """Readable ticks for an asinh axis: 0 and ±1·10^k (then ±2, ±5·10^k) kept only where they
    are at least 1/count of the axis apart, so labels near 0 do not pile up."""

    def warp(v: float) -> float:
        return math.asinh(v / scale)

    span = warp(hi) - warp(lo)
    if not span > 0:
        return []
    top = max(abs(lo), abs(hi), scale)
    exponents = range(math.ceil(math.log10(top)), math.floor(math.log10(scale)) - 2, -1)
    candidates = [0.0]  # then the tails first: large magnitudes decide the axis
    for mantissa in (1, 5, 2):
        candidates += [s * mantissa * 10.0**k for k in exponents for s in (1, -1)]
    ticks: list[float] = []
    for c in candidates:
        if lo <= c <= hi and all(abs(warp(c) - warp(t)) >= span / count for t in ticks):
            ticks.append(c)
    return sorted(ticks)


def _rug(ax, xs: Tensor, bottom: float, top: float, **style) -> None:
    """Short vertical ticks at ``xs`` between axes fractions ``bottom`` and ``top``, drawn as
    one NaN-separated line: a LineCollection of hundreds of levels on a non-linear axis is
    transformed path by path and made the report 10× slower."""
    x = xs.to(torch.float64)[:, None].expand(-1, 3).flatten().numpy()
    y = torch.tensor([bottom, top, float("nan")]).repeat(len(xs)).numpy()
    ax.plot(x, y, transform=ax.get_xaxis_transform(), lw=0.5, alpha=0.7, **style)


def _grid_shape(panels: int, columns: int = 3) -> tuple[int, int]:
    columns = min(columns, panels)
    return math.ceil(panels / columns), columns


# ------------------------------------------------------------------------ Fig. 1 (sites)


def plot_site_histograms(
    path: Path,
    tensors: dict[str, Tensor],
    metadata: dict,
    selection: str = "kinds",
    worst: int = 6,
) -> Path | None:
    """Fig. 1 style: per picked site, the histogram of its calibration activations (log counts,
    asinh x axis) with the neuron's representable levels (bottom rug), its decision thresholds
    (top rug) and its clipping range, annotated with held-out MSE and the Lloyd-Max ratio.
    ``selection``: "kinds" (a median-ratio site of each kind) or "worst" (largest ratios)."""
    sites = list(metadata.get("sites") or [])
    table = code_table(tensors, metadata)
    if not sites or table is None or site_histogram(tensors, 0) is None:
        return None
    rows = site_rows(metadata)
    if selection == "kinds":
        picks = representative_sites(sites, rows)
        title = "Activation histograms and neuron levels: one median-ratio site per kind"
    elif selection == "worst":
        picks = worst_sites(sites, rows, worst)
        title = "Activation histograms and neuron levels: sites with the largest MSE ÷ Lloyd-Max"
    else:
        raise ValueError(f"unknown selection {selection!r}")
    if not picks:
        return None
    nrows, ncols = _grid_shape(len(picks))
    fig = _figure(4.6 * ncols, 3.3 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten()
    for ax, index in zip(axes, picks, strict=False):
        hist = site_histogram(tensors, index)
        _site_panel(ax, sites[index], hist, table.select(index), rows.get(sites[index], {}))
    for ax in axes[len(picks) :]:
        ax.set_visible(False)
    handles = [
        Patch(color="0.55", label="calibration samples"),
        Patch(color="tab:orange", label="levels SN(x) can take"),
        Patch(color="tab:green", label="thresholds (SN jumps)"),
        Patch(color="tab:red", label="± largest level (clipping)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize="small")
    fig.suptitle(title)
    return _save(fig, path)


def _site_panel(ax, name: str, hist: SiteHistogram, table: CodeTable, row: dict) -> None:
    """One site: log-count histogram on an asinh axis, levels and thresholds as rugs."""
    if math.isfinite(hist.scale):
        ax.set_xscale("asinh", linear_width=hist.scale)
        ax.set_xticks(_asinh_ticks(hist.lo, hist.hi, hist.scale))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.stairs(hist.counts.numpy(), hist.edges.numpy(), fill=True, color="0.55", baseline=0.5)
    ax.set_yscale("log")
    ax.yaxis.set_minor_locator(NullLocator())  # decades suffice; minor ticks cost 40 % of a draw
    ax.set_ylim(bottom=0.5, top=max(float(hist.counts.max()), 1.0) * 3)
    code = transfer(table, hist.lo, hist.hi, hist.scale)
    _rug(ax, code.levels, 0.0, 0.07, color="tab:orange")
    _rug(ax, code.thresholds, 0.93, 1.0, color="tab:green")
    top = float(table.to(torch.float64).max_value()[0])
    for edge in (-top, top):
        if hist.lo <= edge <= hist.hi:
            ax.axvline(edge, color="tab:red", ls="--", lw=0.9)
    ax.set_xlim(hist.lo, hist.hi)
    ax.set_title(name, fontsize="medium")
    ax.set_xlabel("activation x (asinh axis)" if math.isfinite(hist.scale) else "activation x")
    ax.set_ylabel("samples per bin (log)")
    lines = [f"{len(code.levels)} levels in range"]
    if _finite(row.get("mse")):
        lines.insert(0, f"MSE {row['mse']:.3g}")
    if _finite(row.get("lloyd_max_mse")):
        lines.insert(1, f"Lloyd-Max {row['lloyd_max_mse']:.3g}")
    if _finite(row.get("ratio")):
        lines.insert(2, f"ratio {row['ratio']:.2f}")
    ax.text(
        0.02,
        0.9,
        "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        fontsize="x-small",
        bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8, "lw": 0.3},
    )


# -------------------------------------------------------------------- Fig. 3 (allocation)


def _magnitude_samples(hist: SiteHistogram) -> tuple[Tensor, Tensor]:
    """The histogram as weighted |x| points: each bin's share of the samples spread evenly over
    ``SUBSAMPLES`` points inside it (so error integrals see the levels inside a bin)."""
    left, right = hist.edges[:-1], hist.edges[1:]
    fraction = (torch.arange(SUBSAMPLES, dtype=torch.float64) + 0.5) / SUBSAMPLES
    points = left[:, None] + (right - left)[:, None] * fraction
    weight = (hist.counts / max(hist.total, 1.0))[:, None].expand_as(points) / SUBSAMPLES
    return points.flatten().abs(), weight.flatten()


def allocation_errors(hist: SiteHistogram, table: CodeTable) -> dict[str, Tensor | float]:
    """The two quantizers of Fig. 3 on one site's distribution: the neuron SN(x) and a uniform
    allocation of as many magnitude levels over the same range (the rate/temporal coding
    picture). Returns, on ``MAGNITUDE_BINS`` even bins of |x| up to its 99.9th percentile, the
    density and both error densities p(x)·(x − q(x))², and both expected errors E over the
    whole range (the shaded areas), plus both level sets."""
    x, weight = _magnitude_samples(hist)
    top = float(table.to(torch.float64).max_value()[0])
    code = transfer(table, 0.0, max(top, hist.hi, -hist.lo), hist.scale)
    magnitudes = code.levels[code.levels >= 0]
    uniform = uniform_levels(len(magnitudes), float(magnitudes.max()))
    err_sn = (x - sn(x, table)) ** 2
    err_uniform = (x - nearest(x, uniform)) ** 2
    limit = max(hist.abs_quantile(0.999), 1e-30)
    edges = torch.linspace(0.0, limit, MAGNITUDE_BINS + 1, dtype=torch.float64)
    width = edges[1] - edges[0]

    def binned(w: Tensor) -> Tensor:
        return torch.histogram(x, bins=edges, weight=w).hist / width

    return {
        "x": (edges[1:] + edges[:-1]) / 2,
        "limit": limit,
        "density": binned(weight),
        "levels": magnitudes,
        "uniform_levels": uniform,
        "error_density": binned(weight * err_sn),
        "uniform_error_density": binned(weight * err_uniform),
        "E": float((weight * err_sn).sum()),
        "E_uniform": float((weight * err_uniform).sum()),
    }


def plot_allocation(path: Path, tensors: dict[str, Tensor], metadata: dict) -> Path | None:
    """Fig. 3 style. (a) For the most heavy-tailed site: the density of |x| with the neuron's
    levels against a uniform allocation of as many levels; (b) the error density
    p(x)(x − q(x))² of both, shaded (E_R vs E_R'); (c) over all sites: how the T steps are split
    between the grains (steps on grain 1) against the heavy-tailedness (excess kurtosis)."""
    sites = list(metadata.get("sites") or [])
    table = code_table(tensors, metadata)
    if not sites or table is None or site_histogram(tensors, 0) is None:
        return None
    hists = [site_histogram(tensors, i) for i in range(len(sites))]
    kurtosis = [h.moments()["excess_kurtosis"] for h in hists]
    candidates = [i for i, s in enumerate(sites) if site_kind(s) != "probs"] or list(
        range(len(sites))
    )
    pick = max(candidates, key=lambda i: kurtosis[i])
    hist = hists[pick]
    errors = allocation_errors(hist, table.select(pick))
    fig = _figure(15.0, 4.4)
    ax_levels, ax_error, ax_alloc = fig.subplots(1, 3)
    limit = errors["limit"]
    x = errors["x"].numpy()
    ax_levels.stairs(
        errors["density"].numpy(),
        torch.linspace(0, limit, MAGNITUDE_BINS + 1).numpy(),
        color="0.3",
        fill=True,
        alpha=0.5,
        label="density p(|x|)",
    )
    ax_levels.set_yscale("log")
    levels_label = f"neuron levels ({len(errors['levels'])})"
    _rug(ax_levels, errors["levels"], 0.0, 0.08, color="tab:orange", label=levels_label)
    _rug(ax_levels, errors["uniform_levels"], 0.1, 0.18, color="tab:blue", label="uniform")
    ax_levels.set_xlim(0, limit)
    ax_levels.set_xlabel("|x| (up to the 99.9th percentile)")
    ax_levels.set_ylabel("density (log)")
    ax_levels.set_title(f"(a) level allocation, {sites[pick]}", fontsize="medium")
    ax_levels.legend(fontsize="x-small", loc="upper right")

    ax_error.fill_between(
        x,
        errors["error_density"].numpy(),
        step="mid",
        color="tab:orange",
        alpha=0.55,
        lw=0,
        label=f"neuron  E_R' = {errors['E']:.3g}",
    )
    ax_error.fill_between(
        x,
        errors["uniform_error_density"].numpy(),
        step="mid",
        facecolor="none",
        edgecolor="tab:blue",
        hatch="////",
        lw=0.8,
        label=f"uniform  E_R = {errors['E_uniform']:.3g}",
    )
    ax_error.set_xlim(0, limit)
    ax_error.set_xlabel("|x| (up to the 99.9th percentile)")
    ax_error.set_ylabel("p(x)·(x − q(x))²")
    ax_error.set_title("(b) conversion error density", fontsize="medium")
    ax_error.legend(fontsize="x-small", loc="upper right")

    _allocation_scatter(ax_alloc, sites, table, kurtosis)
    spec = metadata.get("spec") or {}
    fig.suptitle(
        f"Distribution-aware allocation ({spec.get('method', metadata.get('method', '?'))}, "
        f"T={table.timesteps})"
    )
    return _save(fig, path)


def _allocation_scatter(ax, sites: list[str], table: CodeTable, kurtosis: list[float]) -> None:
    """Steps on grain 1 per site against its excess kurtosis, one colour per kind."""
    allocations = table.allocations
    ax.set_title("(c) step allocation vs. heavy tails", fontsize="medium")
    if allocations is None or all(len(a) == 1 for a in allocations):
        ax.text(
            0.5,
            0.5,
            "single grain: every site spends\nall T steps on one base",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return
    jitter = torch.linspace(-0.15, 0.15, 7, dtype=torch.float64)
    for kind in _kinds_in(sites):
        members = [i for i, s in enumerate(sites) if site_kind(s) == kind]
        xs = [kurtosis[i] for i in members]
        ys = [allocations[i][0] + float(jitter[n % 7]) for n, i in enumerate(members)]
        ax.scatter(xs, ys, s=14, color=kind_color(kind), label=kind, alpha=0.8)
    ax.set_xscale("asinh", linear_width=1.0)
    ax.set_xticks(_asinh_ticks(min(kurtosis), max(kurtosis), 1.0, count=5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("excess kurtosis of the site (asinh axis)")
    ax.set_ylabel(f"steps on grain 1 (of T={table.timesteps})")
    ax.set_ylim(0.5, table.timesteps - 0.5)
    ax.legend(fontsize="x-small", ncols=2, loc="best")


# ------------------------------------------------------------------- Fig. 4 (training)


def _phase_runs(phases: list[str]) -> list[tuple[str, int, int]]:
    """Contiguous runs (phase, first step, last step + 1)."""
    runs: list[tuple[str, int, int]] = []
    for step, phase in enumerate(phases):
        if runs and runs[-1][0] == phase:
            runs[-1] = (phase, runs[-1][1], step + 1)
        else:
            runs.append((phase, step, step + 1))
    return runs


def plot_loss_curves(path: Path, tensors: dict[str, Tensor], metadata: dict) -> Path | None:
    """Fig. 4 style: training loss (MSE / max|x|², mean over the sites of each kind, log y)
    per step, with Alg. 1's phases shaded (red: h and θ, blue: B). With a ``base_curve``
    tensor [S, steps, G] the mean base of each grain is drawn dashed on a second axis, as the
    paper's dashed B curves; otherwise the trained bases are noted."""
    curve = tensors.get("loss_curve")
    sites = list(metadata.get("sites") or [])
    if curve is None or curve.dim() != 2 or curve.shape[1] == 0 or len(sites) != curve.shape[0]:
        return None
    curve = curve.to(torch.float64)
    phases = list(metadata.get("loss_phases") or [])
    fig = _figure(9.0, 4.8)
    ax = fig.subplots()
    steps = torch.arange(1, curve.shape[1] + 1).numpy()
    if len(phases) == curve.shape[1]:
        for phase, start, stop in _phase_runs(phases):
            ax.axvspan(start + 0.5, stop + 0.5, color=PHASE_COLORS.get(phase, "0.8"), alpha=0.1)
    for kind in _kinds_in(sites):
        members = [i for i, s in enumerate(sites) if site_kind(s) == kind]
        mean = curve[members].mean(0).clamp_min(1e-30)
        ax.plot(steps, mean.numpy(), color=kind_color(kind), lw=1.2, label=kind)
    ax.set_yscale("log")
    ax.set_xlim(0.5, curve.shape[1] + 0.5)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss, MSE / max|x|² (mean over sites, log)")
    handles, labels = ax.get_legend_handles_labels()
    for phase in dict.fromkeys(phases):
        handles.append(Patch(color=PHASE_COLORS.get(phase, "0.8"), alpha=0.3))
        labels.append(PHASE_LABELS.get(phase, phase))
    title = "Neuron training (Alg. 1): loss per step, phases shaded"
    base_curve = tensors.get("base_curve")
    if base_curve is not None and base_curve.dim() == 3 and base_curve.shape[:2] == curve.shape:
        twin = ax.twinx()
        for g in range(base_curve.shape[2]):
            mean = base_curve[:, :, g].to(torch.float64).mean(0).numpy()
            (line,) = twin.plot(steps, mean, ls="--", color=f"C{g}", lw=1.0)
            handles.append(line)
            labels.append(f"B_{g} (mean)")
        twin.set_ylabel("base B (mean over sites, dashed)")
    elif "bases" in tensors and metadata.get("allocation"):
        title += "\n" + _bases_note(tensors["bases"], metadata["allocation"])
    fig.legend(handles, labels, fontsize="x-small", loc="outside right upper")
    ax.set_title(title, fontsize="medium")
    return _save(fig, path)


def _bases_note(bases: Tensor, allocation: list[list[int]]) -> str:
    """'trained bases (mean over sites): B_0 2.01, B_1 2.48' over the grains in use."""
    grains = max(len(a) for a in allocation)
    parts = []
    for g in range(grains):
        used = [i for i, a in enumerate(allocation) if len(a) > g]
        parts.append(f"B_{g} {float(bases[used, g].mean()):.3f}")
    return "trained bases (mean over sites): " + ", ".join(parts)


# ------------------------------------------------------------------------ energy per layer


def _layer_label(layer: str) -> str:
    return layer.split(".")[-1] if layer.startswith("layers.") else layer


def plot_energy_layers(path: Path, energy: dict | None) -> Path | None:
    """From `phasecode energy --json`: per layer, the SNN's firing rate, and the energy of SNN
    and ANN split into compute (MAC+AC, Eq. 18), memory traffic (Eq. 59) and neurons; plus the
    firing rate per site kind."""
    layers = (energy or {}).get("layers")
    if not layers:
        return None
    names = [_layer_label(str(row["layer"])) for row in layers]
    index = torch.arange(len(layers), dtype=torch.float64).numpy()
    rates = (energy or {}).get("site_firing_rates") or {}
    fig = _figure(max(9.0, 0.32 * len(layers) + 4), 8.0)
    grid = fig.add_gridspec(2, 3)
    ax_rate = fig.add_subplot(grid[0, :2])
    ax_kind = fig.add_subplot(grid[0, 2])
    ax_energy = fig.add_subplot(grid[1, :])
    ax_rate.bar(index, [row["snn"].get("firing_rate", 0.0) for row in layers], color="tab:green")
    ax_rate.set_xticks(index, names, fontsize="x-small")
    ax_rate.set_ylabel("firing rate (spikes / neuron / step)")
    ax_rate.set_title("SNN firing rate per layer", fontsize="medium")
    if rates:
        kinds = _ordered_kinds(rates)  # the energy report's rates are per kind already
        ax_kind.barh(kinds, [rates[k] for k in kinds], color=[kind_color(k) for k in kinds])
        ax_kind.invert_yaxis()
        ax_kind.set_xlabel("firing rate")
        ax_kind.set_title("per site kind", fontsize="medium")
    else:
        ax_kind.set_axis_off()
    width = 0.4
    milli = 1e3
    parts = [
        ("energy_j", "compute (MAC+AC)", "tab:blue"),
        ("rw_energy_j", "memory read/write", "tab:orange"),
        ("neuron_energy_j", "neurons", "tab:purple"),
    ]
    for offset, network, hatch in ((-width / 2, "snn", ""), (width / 2, "ann", "//")):
        bottom = torch.zeros(len(layers), dtype=torch.float64)
        for key, label, color in parts:
            values = torch.tensor([row[network].get(key, 0.0) * milli for row in layers])
            if network == "ann" and key == "neuron_energy_j":
                continue
            ax_energy.bar(
                index + offset,
                values.numpy(),
                width,
                bottom=bottom.numpy(),
                color=color,
                hatch=hatch,
                edgecolor="white",
                lw=0.3,
                label=f"{network.upper()} {label}",
            )
            bottom += values
    ax_energy.set_xticks(index, names, fontsize="x-small")
    ax_energy.set_xlabel("layer (left bar SNN, right hatched bar ANN)")
    ax_energy.set_ylabel("energy (mJ)")
    ax_energy.legend(fontsize="x-small", ncols=3)
    ratios = (energy or {}).get("ratios") or {}
    title = "Energy per layer"
    if ratios:
        title += (
            f": SNN/ANN compute {ratios.get('compute', float('nan')):.3f}, "
            f"total {ratios.get('total', float('nan')):.3f}"
        )
    tokens = (energy or {}).get("tokens")
    costs = ((energy or {}).get("costs") or {}).get("name")
    if tokens or costs:
        title += f"  [{tokens} tokens, {costs}]"
    ax_energy.set_title(title, fontsize="medium")
    return _save(fig, path)


# ---------------------------------------------------------------------------- PPL vs T


def ppl_series(results: dict) -> tuple[float | None, dict[str, list[tuple[int, float]]]]:
    """ANN perplexity and, per series label, the (T, PPL) points of the ok cells of a
    `compare` results.json (the file's dict, or its "records")."""
    records = results.get("records", results)
    ann = [r["ppl"] for k, r in records.items() if k.startswith("ann-") and _ok(r)]
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for key, record in records.items():
        if key.startswith("ann-") or not _ok(record) or "cell" not in record:
            continue
        cell = record["cell"]
        label = record.get("series") or cell.get("method", "?")
        if cell.get("weight_bits"):
            label += f" W{cell['weight_bits']}"
        if not cell.get("rotate", True) or not cell.get("prefix", True):
            label += f" (rot={int(cell.get('rotate', 1))}, prefix={int(cell.get('prefix', 1))})"
        series[label].append((int(cell["timesteps"]), float(record["ppl"])))
    return (ann[-1] if ann else None), dict(series)


def _ok(record: dict) -> bool:
    return record.get("status") == "ok" and _finite(record.get("ppl"))


def plot_ppl_vs_timesteps(path: Path, results: dict | None) -> Path | None:
    """PPL against T per method (log y) from a `compare` directory's results.json; a series
    with a single T (TTFS at 128) far from the others is drawn as a dotted level."""
    if not results:
        return None
    ann, series = ppl_series(results)
    if not series:
        return None
    grid = sorted({t for points in series.values() for t, _ in points if t <= 32})
    fig = _figure(7.0, 4.6)
    ax = fig.subplots()
    for n, (label, points) in enumerate(sorted(series.items())):
        points = sorted(points)
        if grid and all(t not in grid for t, _ in points):
            for t, ppl in points:
                ax.axhline(ppl, ls=":", color="gray")
                ax.annotate(f"{label} (T={t})", (min(grid), ppl), fontsize="x-small")
            continue
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=label, color=f"C{n % 10}")
    if ann is not None:
        ax.axhline(ann, ls="--", color="black", label=f"ANN ({ann:.2f})")
    ax.set_yscale("log")
    if grid:
        ax.set_xticks(grid)
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("perplexity (log)")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_title("Perplexity against timesteps per method")
    ax.legend(fontsize="x-small")
    return _save(fig, path)


# ----------------------------------------------------------------------------- outliers


def _matrix(rows) -> Tensor | None:
    """A [layers, positions] float64 tensor from nested lists (ragged rows cut to the shortest)."""
    if not rows or not all(isinstance(r, (list, tuple)) and r for r in rows):
        return None
    width = min(len(r) for r in rows)
    return torch.tensor([list(r[:width]) for r in rows], dtype=torch.float64)


def plot_outliers(path: Path, profile: dict | None) -> Path | None:
    """Peak |x| at the down_proj inputs per layer and token position, before (original model,
    no prefix) and after the rotation and the prefix: two heatmaps on one log colour scale, and
    the per-layer peak over positions of both."""
    if not profile:
        return None
    before, after = _matrix(profile.get("before")), _matrix(profile.get("after"))
    if before is None or after is None:
        return None
    low = float(torch.cat([before.flatten(), after.flatten()]).clamp_min(1e-12).min())
    high = max(float(before.max()), float(after.max()), low * 10)
    norm = LogNorm(vmin=max(low, high * 1e-6), vmax=high)
    fig = _figure(14.0, 4.6)
    ax_before, ax_after, ax_peak = fig.subplots(1, 3)
    site = profile.get("site", "down_proj input")
    for ax, data, label in ((ax_before, before, "before"), (ax_after, after, "after")):
        image = ax.imshow(
            data.clamp_min(norm.vmin).numpy(),
            aspect="auto",
            origin="lower",
            norm=norm,
            cmap="magma",
            interpolation="nearest",
        )
        ax.set_xlabel("token position" + (" (after the prefix)" if label == "after" else ""))
        ax.set_ylabel("layer")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"peak |x| at {site}, {label}", fontsize="medium")
    fig.colorbar(image, ax=[ax_before, ax_after], label="peak |x| (log)", shrink=0.9)
    layers = torch.arange(before.shape[0]).numpy()
    ax_peak.plot(layers, before.amax(1).numpy(), marker="o", label="before", color="tab:red")
    ax_peak.plot(
        torch.arange(after.shape[0]).numpy(),
        after.amax(1).numpy(),
        marker="o",
        label=profile.get("after_label", "after rotation + prefix"),
        color="tab:blue",
    )
    ax_peak.set_yscale("log")
    ax_peak.set_xlabel("layer")
    ax_peak.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_peak.set_ylabel("peak |x| over positions (log)")
    ax_peak.set_title("per-layer peak", fontsize="medium")
    ax_peak.legend(fontsize="small")
    fig.suptitle("Massive activations before and after rotation + prefix")
    return _save(fig, path)
