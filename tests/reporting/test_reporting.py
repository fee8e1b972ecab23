"""`phasecode report`'s engine: histograms, every figure, and the Markdown/HTML document, on a
converted tiny LLaMA (calibration samples give the histograms, as conversion will store them)."""

from __future__ import annotations

import json
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from helpers import CONVERTIBLE_SIZES, write_calibration
from transformers import AutoModelForCausalLM, LlamaConfig

from phasecode.artifacts import load_artifact, save_artifact
from phasecode.cache.fingerprint import model_fingerprint
from phasecode.calibration.histograms import (
    bin_edges,
    site_histogram,
    site_histograms,
)
from phasecode.coding.baselines import las
from phasecode.conversion.convert import calibrate, fit_spiking
from phasecode.conversion.store import save_spiking
from phasecode.errors import PhasecodeError
from phasecode.reporting import figures
from phasecode.reporting.levels import transfer
from phasecode.reporting.report import (
    describe_budget,
    describe_range,
    describe_reconstruction,
    write_report,
)
from phasecode.settings import FitSettings, SamplingSettings, TrainConfig
from phasecode.simulation.counting import OpCount
from phasecode.simulation.energy import PRESETS, costs_dict, summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = {
    "fig1_sites_by_kind.png",
    "fig1_worst_sites.png",
    "fig3_allocation.png",
    "fig4_training_loss.png",
    "energy_layers.png",
    "ppl_vs_T.png",
    "outliers.png",
}
ARTIFACT_FIGURES = ALL_FIGURES - {"energy_layers.png", "ppl_vs_T.png", "outliers.png"}


def _outliers_profile(layers: int, positions: int = 16) -> dict:
    gen = torch.Generator().manual_seed(1)
    before = torch.rand(layers, positions, generator=gen) * 4 + 1
    before[:, 0] = 900.0  # the BOS token's massive activation
    after = torch.rand(layers, positions, generator=gen) * 2 + 1
    return {
        "site": "down_proj input",
        "positions": list(range(positions)),
        "before": before.tolist(),
        "after": after.tolist(),
    }


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny LLaMA converted with mgpc (T=4, 2 grains), saved, then given histograms of its
    calibration samples and an outlier profile the way conversion is to store them."""
    work = tmp_path_factory.mktemp("report")
    calibration = write_calibration(work / "calib.jsonl", docs=8)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**CONVERTIBLE_SIZES)).eval()
    base = {"name": "tiny-llama", "fingerprint": model_fingerprint(model)}
    fit = FitSettings("mgpc", 4, 2, TrainConfig(rounds=2, search_steps=2, search_samples=64))
    sampling = SamplingSettings(samples=128, calibration=calibration, sequences=4, seq_len=32)
    calibrated = calibrate(model, tiny_tokenizer, sampling, progress=False)
    spiking = fit_spiking(calibrated, fit, progress=False)
    spiking.report["outliers_profile"] = _outliers_profile(model.config.num_hidden_layers)
    directory = work / "artifact"
    save_spiking(directory, spiking, base)
    tensors, metadata = load_artifact(directory)
    samples = torch.cat([calibrated.train, calibrated.heldout], 1)
    tensors.update(site_histograms(samples, bins=64))
    save_artifact(directory, tensors, metadata)
    return directory


def _energy_report(layers: int) -> dict:
    """An `energy --json` report in the shape jobs/energy.py writes."""
    costs = PRESETS["45nm-fp32"]
    rows = []
    for i, name in enumerate([*(f"layers.{i}" for i in range(layers)), "head"]):
        snn = OpCount(mac=1e6, ac=5e7 * (i + 1), reads=6e7, writes=1e6, bit_reads=5e7,
                      bit_writes=2e6, spikes=2e6, neuron_steps=1e7, neuron_ops=3e7)  # fmt: skip
        ann = OpCount(mac=8e7, reads=1.6e8, writes=2e6)
        rows.append({"layer": name, "snn": summary(snn, costs), "ann": summary(ann, costs)})
    snn, ann = rows[0]["snn"], rows[0]["ann"]
    return {
        "artifact": "x",
        "tokens": 64,
        "timesteps": 4,
        "mask_strength": 1,
        "costs": costs_dict(costs),
        "ann": ann,
        "snn": {**snn, "ppl_ratio": 1.03},
        "snn_masked": {**snn, "ppl_ratio": 1.05},
        "ratios": {"compute": 0.6, "total": 1.3, "compute_masked": 0.58, "total_masked": 1.28},
        "ppl": {"ann": 30.0, "snn": 31.0, "snn_masked": 31.5, "windows": 2, "seq_len": 64},
        "layers": rows,
        "site_firing_rates": {"qkv": 0.2, "probs": 0.05, "down": 0.1, "lm_head": 0.15},
        "operations": [],
        "seconds": {"snn": 1.0, "snn_masked": 1.0},
    }


def _results() -> dict:
    """A `compare` results.json: the ANN, two series over T, TTFS at 128 and a failed cell."""
    records = {"ann-abc": {"status": "ok", "ppl": 30.0, "seconds": 1.0}}
    for t, ppl_las, ppl_mgpc in ((6, 80.0, 45.0), (8, 40.0, 33.0), (10, 33.0, 31.0)):
        for method, ppl, series in (("las", ppl_las, "LAS"), ("mgpc", ppl_mgpc, "Ours (Grain=2)")):
            cell = {"method": method, "timesteps": t, "grains": 2, "mode": None,
                    "weight_bits": None, "rotate": True, "prefix": True}  # fmt: skip
            records[f"{method}-T{t}"] = {"cell": cell, "series": series, "status": "ok",
                                         "ppl": ppl}  # fmt: skip
    ttfs = {"method": "ttfs", "timesteps": 128, "grains": 1, "rotate": True, "prefix": True}
    records["ttfs"] = {"cell": ttfs, "series": "TTFSFormer", "status": "ok", "ppl": 60.0}
    records["bad"] = {"cell": ttfs, "series": "x", "status": "failed", "error": "boom"}
    return {"format": 1, "records": records}


class _Images(HTMLParser):
    """The src of every <img>, and every URL-valued attribute and tag that could fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.urls: list[str] = []
        self.fetching_tags: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.sources.append(attributes.get("src", ""))
        if tag in ("link", "script", "iframe", "object"):
            self.fetching_tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]


def _check_outputs(out: Path, expected: set[str]) -> None:
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == expected
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    markdown = (out / "report.md").read_text()
    for name in pngs:
        assert f"]({name})" in markdown
    parser = _Images()
    parser.feed((out / "report.html").read_text())
    parser.close()
    assert len(parser.sources) == len(expected)
    assert all(s.startswith("data:image/png;base64,") for s in parser.sources)
    assert all(url.startswith("data:") for url in parser.urls)  # no external resource
    assert not parser.fetching_tags


def test_site_histograms_count_every_sample_and_cover_the_range():
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(3, 5000, generator=gen) * torch.tensor([[1.0], [0.01], [50.0]])
    samples[0, :10] = 300.0  # heavy tail
    samples[2] = samples[2].abs()  # non-negative site (like softmax probabilities)
    samples[1, 7] = float("nan")
    out = site_histograms(samples, bins=128)
    assert out["histogram_counts"].shape == (3, 128)
    assert out["histogram_counts"].dtype == torch.int64
    assert out["histogram_counts"].sum(1).tolist() == [5000, 4999, 5000]
    finite = samples.nan_to_num(0.0)
    ranges = out["histogram_range"]
    assert (ranges[:, 0] <= finite.amin(1)).all() and (ranges[:, 1] >= finite.amax(1)).all()
    edges = bin_edges(ranges, out["histogram_scale"], 128)
    assert (edges.diff(dim=1) > 0).all()
    # the body is resolved despite the tail: more than 20 bins inside one std of site 0
    inside = ((edges[0] > -1) & (edges[0] < 1)).sum()
    assert inside > 20
    # each value falls in the bin whose edges bracket it
    hist = site_histogram(out, 0)
    values = samples[0].double()
    index = torch.searchsorted(hist.edges, values, right=True).clamp(1, 128) - 1
    assert torch.equal(torch.bincount(index, minlength=128).double(), hist.counts)


def test_site_histograms_of_a_constant_site():
    out = site_histograms(torch.zeros(1, 10))
    assert out["histogram_counts"].sum() == 10
    assert out["histogram_range"][0, 0] < 0 < out["histogram_range"][0, 1]


def test_transfer_finds_levels_and_thresholds_of_las():
    """LAS at T=3 truncates |x| to steps of τ/8: 15 signed levels, jumps at multiples of τ/8."""
    code = transfer(las(torch.tensor([1.0]), 3), -1.5, 1.5, 0.2)
    expected = torch.arange(-7, 8, dtype=torch.float64) / 8
    assert torch.allclose(code.levels, expected)
    jumps = torch.cat([-torch.arange(7, 0, -1), torch.arange(1, 8)]).double() / 8
    assert torch.allclose(code.thresholds, jumps, atol=1e-6)


def test_report_writes_every_figure_and_a_self_contained_html(artifact, tmp_path):
    energy = tmp_path / "energy.json"
    energy.write_text(json.dumps(_energy_report(CONVERTIBLE_SIZES["num_hidden_layers"])))
    compare = tmp_path / "compare"
    compare.mkdir()
    (compare / "results.json").write_text(json.dumps(_results()))
    evaluation = {"ppl": {"wikitext2": {"ann": 30.0, "snn": 31.2, "ratio": 1.04, "windows": 2}}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    out = tmp_path / "report"
    start = time.perf_counter()
    path = write_report(artifact, out, energy, compare, eval_json=tmp_path / "eval.json")
    assert time.perf_counter() - start < 30
    assert path == out / "report.md"
    _check_outputs(out, ALL_FIGURES)
    text = path.read_text()
    for expected in ("tiny-llama", "mgpc", "1.04", "0.6", "conversion time", "Not drawn"):
        if expected == "Not drawn":
            assert expected not in text
        else:
            assert expected in text, expected


def test_report_skips_figures_whose_data_is_absent(artifact, tmp_path):
    """No energy/compare input, no histograms, no loss curve, no outlier profile: the report
    still renders, says what it left out, and embeds only what it drew."""
    bare = tmp_path / "bare"
    tensors, metadata = load_artifact(artifact)
    for name in ("histogram_counts", "histogram_range", "histogram_scale", "loss_curve"):
        tensors.pop(name)
    metadata["report"].pop("outliers_profile")
    save_artifact(bare, tensors, metadata)
    out = tmp_path / "out"
    write_report(bare, out, None, None)
    _check_outputs(out, set())
    assert "Not drawn" in (out / "report.md").read_text()


def test_report_without_the_optional_inputs_draws_the_artifact_figures(artifact, tmp_path):
    tensors, metadata = load_artifact(artifact)
    metadata["report"].pop("outliers_profile")
    save_artifact(tmp_path / "a", tensors, metadata)
    write_report(tmp_path / "a", tmp_path / "out", None, None)
    _check_outputs(tmp_path / "out", ARTIFACT_FIGURES)


def test_figures_return_none_without_data(tmp_path):
    assert figures.plot_energy_layers(tmp_path / "e.png", None) is None
    assert figures.plot_energy_layers(tmp_path / "e.png", {"layers": []}) is None
    assert figures.plot_ppl_vs_timesteps(tmp_path / "p.png", None) is None
    assert figures.plot_ppl_vs_timesteps(tmp_path / "p.png", {"records": {}}) is None
    assert figures.plot_outliers(tmp_path / "o.png", None) is None
    assert figures.plot_outliers(tmp_path / "o.png", {"before": [[1.0]]}) is None
    assert figures.plot_loss_curves(tmp_path / "l.png", {}, {"sites": ["a"]}) is None
    assert figures.plot_site_histograms(tmp_path / "h.png", {}, {"sites": ["a"]}) is None
    assert figures.plot_allocation(tmp_path / "a.png", {}, {}) is None
    assert not list(tmp_path.iterdir())


def test_report_rejects_bad_inputs(artifact, tmp_path):
    with pytest.raises(PhasecodeError, match="not a phasecode artifact"):
        write_report(tmp_path / "missing", tmp_path / "out", None, None)
    with pytest.raises(PhasecodeError, match="cannot read energy report"):
        write_report(artifact, tmp_path / "out", tmp_path / "none.json", None)
    with pytest.raises(PhasecodeError, match="no results.json"):
        write_report(artifact, tmp_path / "out", None, tmp_path)


def test_the_report_says_how_far_the_neurons_reach():
    assert describe_range(None).startswith("fitted")  # artifacts from before the option
    assert describe_range({"chosen": "peak", "reason": "given"}) == "peak (given)"
    auto = {"chosen": "halfway", "loss": {"fitted": 3.25, "halfway": 3.125, "peak": 3.5}}
    assert describe_range(auto) == (
        "halfway (chosen by --neuron-range auto, calibration NLL fitted: 3.2500, "
        "halfway: 3.1250, peak: 3.5000)"
    )
    with_reference = auto | {"prepared_ann_loss": 3.0, "evidence": 2.5}
    assert describe_range(with_reference).endswith(
        "peak: 3.5000; prepared ANN 3.0000; the lowest by 2.5 standard errors)"
    )


def test_describe_budget_says_what_was_met_and_where_the_sensitivity_came_from():
    budget = {
        "ratio": 0.7,
        "mode": "price",
        "predicted_ratio": 0.712,
        "context": 512,
        "met": False,
        "steps_histogram": {"8": 301},
        "sensitivity": {
            "source": "measured",
            "windows": "8 windows of calibration text after those sampled",
            "kinds": {
                "q": {"factor": 1.0},
                "probs": {"factor": 6.7},
                "up": {"factor": 16.0},
            },
        },
    }
    text = describe_budget(budget)
    assert "predicted 0.712" in text and "MISSED" in text and "T=8: 301" in text
    assert text.endswith("after those sampled: up ×16, probs ×6.7")
    budget["met"] = True
    budget["sensitivity"] = {"source": "fisher"}
    text = describe_budget(budget)
    assert "MISSED" not in text and text.endswith("sensitivity: Fisher estimate")


def test_describe_reconstruction_says_what_the_tuning_did():
    block = {
        "layers": [
            {"loss_before": 0.2, "loss_after": 0.1},
            {"loss_before": 0.2, "loss_after": 0.2},
        ],
        "seconds": 12.4,
    }
    assert describe_reconstruction(block) == "block: 1/2 layers improved, 12 s"
    output = {"kl_before": 0.0764, "kl_tuned": 0.0572, "kept": True, "steps": 40, "seconds": 345}
    text = describe_reconstruction(output | {"energy_tuned": 0.9992})
    assert text == (
        "output: calibration KL 0.0764 → 0.0572 (kept, spike energy ×0.999 of the fitted "
        "neurons'), 345 s"
    )
    assert "not kept" in describe_reconstruction(output | {"kept": False})
    assert "(kept after 3 passes)" in describe_reconstruction(output | {"passes_kept": 3})
