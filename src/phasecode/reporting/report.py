"""`phasecode report DIR`: a Markdown + self-contained HTML report of a converted model.

The report reads only the artifact (neurons, settings, conversion report, histograms, loss
curves) and optional JSON files next to it — never the base model — so it runs in seconds on
any machine. The document is built once as a list of blocks and rendered twice: report.md
(figures as relative PNG links) and report.html (figures embedded as base64 data URIs, inline
CSS, no external resource), so the HTML can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from phasecode.artifacts import (
    NEURONS_KIND,
    SPIKING_MODEL_KIND,
    load_artifact,
    write_text_atomic,
)
from phasecode.errors import PhasecodeError
from phasecode.models.sites import site_kind
from phasecode.outputs import claim_dir
from phasecode.reporting import figures

ARTIFACT_KINDS = (SPIKING_MODEL_KIND, NEURONS_KIND)
EVAL_NAMES = ("eval.json", "evaluation.json")  # looked for in the artifact directory
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1, h2 { font-weight: 600; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; } code { background: #f5f5f5; padding: 0 .2em; }
"""


@dataclass(frozen=True)
class Block:
    """One piece of the document: ("h1" | "h2" | "p" | "list" | "table" | "figure", data)."""

    kind: str
    data: object


def _read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; a missing or malformed file is one clear user error."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PhasecodeError(f"cannot read {what} {path}: {e}") from None
    if not isinstance(data, dict):
        raise PhasecodeError(f"{what} {path} is not a JSON object")
    return data


def _spec(metadata: dict) -> dict:
    """Conversion settings of a spiking-model artifact, or the top-level ones of a neurons one."""
    spec = dict(metadata.get("spec") or {})
    for key in ("method", "timesteps", "grains", "weight_bits"):
        if key not in spec and key in metadata:
            spec[key] = metadata[key]
    return spec


def _fmt(x, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return "—" if x is None else str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _allocation_summary(allocation: list[list[int]] | None) -> str:
    """'(4, 4) × 12, (3, 5) × 9' — how many sites use each split of the T steps."""
    if not allocation:
        return "—"
    counts = Counter(tuple(a) for a in allocation)
    return ", ".join(f"{tuple(a)} × {n}" for a, n in counts.most_common())


def describe_range(choice: dict | None) -> str:
    """How far the neurons reach (``neuron_range_choice``; older artifacts: fitted)."""
    if not choice:
        return "fitted (Alg. 1's own range)"
    if "loss" not in choice:
        return f"{choice['chosen']} (given)"
    losses = ", ".join(f"{name}: {loss:.4f}" for name, loss in choice["loss"].items())
    evidence = choice.get("evidence")
    margin = "" if evidence is None else f"; the lowest by {evidence:.1f} standard errors"
    ann = choice.get("prepared_ann_loss")  # older artifacts have none
    reference = "" if ann is None else f"; prepared ANN {ann:.4f}"
    return (
        f"{choice['chosen']} (chosen by --neuron-range auto, calibration NLL {losses}"
        f"{reference}{margin})"
    )


def describe_reconstruction(record: dict) -> str:
    """What tuning the neurons after training did (the report's ``reconstruction``)."""
    if "layers" in record:
        layers = record["layers"]
        improved = sum(row["loss_after"] < row["loss_before"] for row in layers)
        return f"block: {improved}/{len(layers)} layers improved, {record['seconds']:.0f} s"
    energy = record.get("energy_tuned")
    spikes = "" if energy is None else f", spike energy ×{energy:.3f} of the fitted neurons'"
    kept = "kept" if record["kept"] else "not kept: the fitted neurons stay"
    passes = record.get("passes_kept")  # older artifacts: all passes or none
    if record["kept"] and passes is not None:
        kept = f"kept after {passes} passes"
    return (
        f"output: calibration KL {record['kl_before']:.4f} → {record['kl_tuned']:.4f} ({kept}"
        f"{spikes}), {record['seconds']:.0f} s"
    )


def describe_budget(budget: dict) -> str:
    """What an energy budget chose and predicted, and where its sensitivity came from."""
    steps = ", ".join(f"T={t}: {n}" for t, n in budget["steps_histogram"].items())
    text = (
        f"{budget['ratio']} by {budget.get('mode', 'knapsack')} (predicted "
        f"{budget['predicted_ratio']:.3f} on {budget['context']} tokens"
        f"{'' if budget.get('met', True) else ', MISSED'}); sites by T: {steps}"
    )
    sensitivity = budget.get("sensitivity") or {"source": "fisher"}
    if sensitivity["source"] != "measured":
        return text + "; sensitivity: Fisher estimate"
    kinds = sensitivity["kinds"]
    factors = ", ".join(
        f"{kind} ×{row['factor']:.2g}"
        for kind, row in sorted(kinds.items(), key=lambda item: -item[1]["factor"])
        if row["factor"] != 1.0
    )
    return text + f"; sensitivity measured on {sensitivity['windows']}: {factors or 'as estimated'}"


def _ppl_rows(report: dict, evaluation: dict | None) -> list[tuple[str, str]]:
    """PPL lines from the conversion report (if the lead stores one) or an `eval --json`."""
    rows = []
    for source in (report, evaluation or {}):
        for corpus, row in (source.get("ppl") or {}).items():
            if isinstance(row, dict) and "ratio" in row:
                rows.append(
                    (
                        f"PPL {corpus} (SNN / ANN)",
                        f"{_fmt(row.get('snn'))} / {_fmt(row.get('ann'))} = "
                        f"{row['ratio']:.4f} ({row.get('windows', '?')} windows)",
                    )
                )
        if rows:
            break
    return rows


def _energy_rows(energy: dict | None) -> list[tuple[str, str]]:
    if not energy:
        return []
    ratios = energy.get("ratios") or {}
    rows = [
        (
            "energy SNN/ANN (MAC+AC; total with memory)",
            f"{_fmt(ratios.get('compute'))}; {_fmt(ratios.get('total'))}",
        ),
        (
            f"energy SNN/ANN with spike masking {energy.get('mask_strength', '?')}",
            f"{_fmt(ratios.get('compute_masked'))}; {_fmt(ratios.get('total_masked'))}",
        ),
    ]
    snn = energy.get("snn") or {}
    if "firing_rate" in snn:
        rows.append(("SNN firing rate", _fmt(snn["firing_rate"])))
    masked = energy.get("snn_masked") or {}
    if "ppl_ratio" in snn:
        rows.append(
            (
                "PPL ratio in the energy run (unmasked; masked)",
                f"{_fmt(snn['ppl_ratio'])}; {_fmt(masked.get('ppl_ratio'))}",
            )
        )
    return rows


def _summary(metadata: dict, evaluation: dict | None, energy: dict | None) -> list[list[str]]:
    report = metadata.get("report") or {}
    spec = _spec(metadata)
    base = metadata.get("base_model") or {}
    seconds = report.get("seconds") or {}
    rows: list[tuple[str, str]] = [
        ("model", f"{base.get('name', '?')} (fingerprint {str(base.get('fingerprint', ''))[:12]})"),
        ("method", _fmt(spec.get("method"))),
        ("timesteps T", _fmt(spec.get("timesteps"))),
        ("grains", _fmt(spec.get("grains"))),
        ("step allocation (sites)", _allocation_summary(metadata.get("allocation"))),
        ("sites", str(len(metadata.get("sites") or []))),
    ]
    if "rotate" in spec:
        prefix = spec.get("prefix_tokens") or []
        rows.append(
            (
                "outlier handling",
                f"rotation {'on' if spec['rotate'] else 'off'}, prefix of {len(prefix)} tokens, "
                f"lm_head {'coded' if spec.get('lm_head', True) else 'analog'}, balance "
                f"{'on' if spec.get('balance') else 'off'}",
            )
        )
    rows.append(("weights", f"{spec['weight_bits']}-bit" if spec.get("weight_bits") else "full"))
    rows.append(("neuron", spec.get("code", "binary")))
    rows.append(("neuron range", describe_range(report.get("neuron_range_choice"))))
    objective = report.get("objective", "mse")
    if report.get("probs_bias"):
        objective += f", κ = {report['probs_bias']:g} on the probabilities' mean error"
    choice = report.get("probs_bias_choice")
    if choice and "loss" in choice:
        losses = ", ".join(f"κ = {k}: {v:.4f}" for k, v in choice["loss"].items())
        objective += f" (κ chosen by --probs-bias auto, calibration NLL {losses})"
    rows.append(("training objective", objective))
    if report.get("reconstruction"):
        rows.append(("tuned after training", describe_reconstruction(report["reconstruction"])))
    budget = report.get("energy_budget")
    if budget is not None:
        rows.append(("energy budget", describe_budget(budget)))
    mean_ratio = report.get("mean_ratio", metadata.get("mean_ratio"))
    if mean_ratio is not None:
        rows.append(("mean held-out MSE ÷ Lloyd-Max", _fmt(mean_ratio)))
    rows += _ppl_rows(report, evaluation)
    rows += _energy_rows(energy)
    if seconds:
        total = sum(v for v in seconds.values() if isinstance(v, (int, float)))
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
        prefix_s = report.get("prefix_seconds")
        extra = f" (+ prefix {prefix_s:.1f} s)" if prefix_s else ""
        rows.append(("conversion time", f"{total:.1f} s: {parts}{extra}"))
    return [list(r) for r in rows]


def _kind_table(metadata: dict) -> list[list[str]]:
    """Per site kind: number of sites, mean held-out MSE, mean and worst ratio."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in (metadata.get("report") or {}).get("sites", []):
        groups[site_kind(row["name"])].append(row)
    table = []
    for kind, rows in groups.items():
        ratios = [r["ratio"] for r in rows]
        table.append(
            [
                kind,
                str(len(rows)),
                f"{sum(r['mse'] for r in rows) / len(rows):.3e}",
                f"{sum(ratios) / len(ratios):.3f}",
                f"{max(ratios):.3f}",
            ]
        )
    return table


def _prefix_blocks(report: dict) -> list[Block]:
    """Which tokens went into the prefix and why (``prefix_choice``; older artifacts: the
    outlier-token search's ``outlier_tokens``)."""
    choice = report.get("prefix_choice")
    if isinstance(choice, dict) and choice:
        items = [f"chosen token ids: {choice.get('chosen', [])}"]
        items += [
            f"{key}: {_fmt(value)}"
            for key, value in choice.items()
            if key != "chosen" and isinstance(value, (str, int, float))
        ]
        return [Block("h2", "Prefix"), Block("list", items)]
    tokens = report.get("outlier_tokens") or []
    if tokens:
        items = [", ".join(f"{k} {_fmt(v)}" for k, v in token.items()) for token in tokens]
        return [Block("h2", "Outlier tokens put in the prefix"), Block("list", items)]
    return []


FigureJob = tuple[str, str, Callable[[Path], Path | None]]


def _figure_jobs(
    tensors: dict, metadata: dict, energy: dict | None, results: dict | None
) -> list[FigureJob]:
    """(file name, caption, draw) for every figure, in report order."""
    report = metadata.get("report") or {}
    return [
        (
            "fig1_sites_by_kind.png",
            "Calibration activations of one site per kind (the site of median MSE ÷ Lloyd-Max "
            "ratio), log counts on an asinh axis, with the levels the neuron can take (bottom "
            "rug), its decision thresholds (top rug) and its clipping level.",
            lambda p: figures.plot_site_histograms(p, tensors, metadata, "kinds"),
        ),
        (
            "fig1_worst_sites.png",
            "The same for the sites with the largest held-out MSE ÷ Lloyd-Max ratio.",
            lambda p: figures.plot_site_histograms(p, tensors, metadata, "worst"),
        ),
        (
            "fig3_allocation.png",
            "Distribution-aware allocation (paper Fig. 3): the neuron's levels against a "
            "uniform allocation on the most heavy-tailed site, their error densities, and the "
            "split of the T steps between grains against each site's excess kurtosis.",
            lambda p: figures.plot_allocation(p, tensors, metadata),
        ),
        (
            "fig4_training_loss.png",
            "Neuron training loss per step (paper Fig. 4), mean over the sites of each kind; "
            "red spans update h and θ, blue spans the bases B.",
            lambda p: figures.plot_loss_curves(p, tensors, metadata),
        ),
        (
            "energy_layers.png",
            "Firing rate and energy per layer from `phasecode energy --json`: SNN against ANN, "
            "split into compute, memory traffic and neurons.",
            lambda p: figures.plot_energy_layers(p, energy),
        ),
        (
            "ppl_vs_T.png",
            "Perplexity against timesteps per method from `phasecode compare`.",
            lambda p: figures.plot_ppl_vs_timesteps(p, results),
        ),
        (
            "outliers.png",
            "Peak |x| at the down_proj inputs per layer and token position, before and after "
            "the rotation and the prefix.",
            lambda p: figures.plot_outliers(p, report.get("outliers_profile")),
        ),
    ]


def _load_artifact(artifact_dir: Path) -> tuple[dict, dict]:
    tensors, metadata = load_artifact(artifact_dir)
    if metadata.get("kind") not in ARTIFACT_KINDS:
        raise PhasecodeError(
            f"{artifact_dir} is not a converted model (kind {metadata.get('kind')!r}); "
            "make one with `phasecode convert`"
        )
    return tensors, metadata


def _evaluation(artifact_dir: Path, eval_json: Path | None) -> dict | None:
    if eval_json is not None:
        return _read_json(eval_json, "evaluation file")
    for name in EVAL_NAMES:
        if (artifact_dir / name).is_file():
            return _read_json(artifact_dir / name, "evaluation file")
    return None


def _results(compare_dir: Path | None) -> dict | None:
    if compare_dir is None:
        return None
    path = Path(compare_dir) / "results.json"
    if not path.is_file():
        raise PhasecodeError(f"{compare_dir} holds no results.json; run `phasecode compare`")
    return _read_json(path, "comparison results")


def build_blocks(
    artifact_dir: Path,
    out_dir: Path,
    energy_json: Path | None = None,
    compare_dir: Path | None = None,
    eval_json: Path | None = None,
) -> list[Block]:
    """Load everything, draw the figures into ``out_dir`` and return the document."""
    artifact_dir, out_dir = Path(artifact_dir), Path(out_dir)
    tensors, metadata = _load_artifact(artifact_dir)
    energy = _read_json(energy_json, "energy report") if energy_json is not None else None
    results = _results(compare_dir)
    evaluation = _evaluation(artifact_dir, eval_json)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = _spec(metadata)
    blocks = [
        Block("h1", f"Spiking model report: {artifact_dir.name}"),
        Block(
            "p",
            f"Artifact `{artifact_dir}` ({metadata.get('kind')}, created "
            f"{metadata.get('created', '?')}): {spec.get('method', '?')} at "
            f"T = {spec.get('timesteps', '?')}.",
        ),
        Block("h2", "Summary"),
        Block("table", (["", "value"], _summary(metadata, evaluation, energy))),
    ]
    kinds = _kind_table(metadata)
    if kinds:
        blocks += [
            Block("h2", "Neurons per site kind"),
            Block(
                "table",
                (["kind", "sites", "mean held-out MSE", "mean ÷ Lloyd-Max", "worst"], kinds),
            ),
        ]
    blocks += _prefix_blocks(metadata.get("report") or {})
    blocks.append(Block("h2", "Figures"))
    skipped = []
    for name, caption, draw in _figure_jobs(tensors, metadata, energy, results):
        path = draw(out_dir / name)
        if path is None:
            skipped.append(name)
        else:
            blocks.append(Block("figure", (Path(path), caption)))
    if skipped:
        blocks.append(
            Block(
                "p",
                "Not drawn (their data is not in the artifact or was not given): "
                + ", ".join(f"`{s}`" for s in skipped)
                + ".",
            )
        )
    return blocks


def write_report(
    artifact_dir: Path,
    out_dir: Path,
    energy_json: Path | None = None,
    compare_dir: Path | None = None,
    eval_json: Path | None = None,
) -> Path:
    """Write report.md, report.html and the figure PNGs to ``out_dir``; return report.md's
    path. ``eval_json`` defaults to an eval.json in the artifact directory, if any."""
    out_dir = Path(out_dir)
    claim_dir(out_dir)
    blocks = build_blocks(artifact_dir, out_dir, energy_json, compare_dir, eval_json)
    markdown_path = out_dir / "report.md"
    write_text_atomic(markdown_path, render_markdown(blocks, out_dir))
    write_text_atomic(out_dir / "report.html", render_html(blocks))
    return markdown_path


# -------------------------------------------------------------------------------- render


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block], out_dir: Path) -> str:
    """The document as Markdown; figures are linked relative to ``out_dir``."""
    lines: list[str] = []
    for block in blocks:
        if block.kind == "h1":
            lines += [f"# {block.data}", ""]
        elif block.kind == "h2":
            lines += [f"## {block.data}", ""]
        elif block.kind == "p":
            lines += [str(block.data), ""]
        elif block.kind == "list":
            lines += [f"- {item}" for item in block.data] + [""]
        elif block.kind == "table":
            header, rows = block.data
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif block.kind == "figure":
            path, caption = block.data
            relative = path.relative_to(out_dir) if path.is_relative_to(out_dir) else path
            lines += [f"![{path.stem}]({relative.as_posix()})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escape text for HTML, turning `code` spans into <code>."""
    parts = re.split(r"`([^`]*)`", str(text))
    return "".join(
        f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts)
    )


def _numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", str(text)))


def render_html(blocks: list[Block]) -> str:
    """The document as one self-contained HTML page (figures as data URIs)."""
    title = next((str(b.data) for b in blocks if b.kind == "h1"), "phasecode report")
    body: list[str] = []
    for block in blocks:
        if block.kind in ("h1", "h2"):
            body.append(f"<{block.kind}>{_inline(block.data)}</{block.kind}>")
        elif block.kind == "p":
            body.append(f"<p>{_inline(block.data)}</p>")
        elif block.kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.data) + "</ul>")
        elif block.kind == "table":
            header, rows = block.data
            head = "".join(f"<th>{_inline(h)}</th>" for h in header)
            cells = [
                "".join(
                    f'<td class="num">{_inline(c)}</td>'
                    if _numeric(c)
                    else f"<td>{_inline(c)}</td>"
                    for c in row
                )
                for row in rows
            ]
            body.append(
                f"<table><thead><tr>{head}</tr></thead><tbody>"
                + "".join(f"<tr>{c}</tr>" for c in cells)
                + "</tbody></table>"
            )
        elif block.kind == "figure":
            path, caption = block.data
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(path.stem)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{_inline(caption)}'
                "</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
