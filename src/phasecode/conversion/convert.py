"""The conversion lifecycle: prepare outliers → calibrate every site → train → spiking model.

1. Hadamard rotation (fold norms, rotate the residual stream, online rotation before
   ``down_proj``), optionally weight quantization of the rotated decoder linears
   (``models/quantize.py``), and the prefix of outlier tokens, computed once by that ANN;
2. optionally the SiLU·up operands balanced per channel (``balance.py``); calibration windows run
   through the model with an ``Observer`` on every site (after the prefix, so no site sees
   the prefix tokens' massive activations; their cached K/V pass the k/v neurons on use);
3. all neurons trained in one batch (``fitting.fit_codes``);
4. the result is a ``SpikingModel`` whose ``coded()`` surgery is the fast equivalent path.
A converted model is fully described by its ``ConversionSpec`` and code table, so an artifact
stores only those and rebuilds the rest from the base model on load.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor

from phasecode.calibration.text import read_texts, token_batches
from phasecode.coding.table import CodeTable
from phasecode.conversion.balance import ChannelPeaks, fold_up_scales
from phasecode.conversion.handlers import Coder, Observer, Passthrough, SiteHandler
from phasecode.conversion.surgery import SpikingSurgery
from phasecode.evaluation.perplexity import perplexity
from phasecode.evaluation.prefix import (
    Prefix,
    build_prefix,
    find_outlier_tokens,
    prefix_token_ids,
)
from phasecode.fitting import (
    FitSettings,
    SamplingSettings,
    fit_codes,
    score_sites,
    split_samples,
)
from phasecode.models.hadamard import OnlineRotation
from phasecode.models.quantize import check_weight_bits, quantize_model
from phasecode.models.rotation import rotate_model
from phasecode.models.sites import spiking_sites

BALANCE_WINDOWS = 4  # calibration windows used to measure the per-channel operand ranges


@dataclass(frozen=True)
class ConversionSpec:
    """Everything that, with the base model and the code table, defines a spiking model."""

    method: str = "mgpc"
    timesteps: int = 8
    grains: int = 2
    rotate: bool = True
    rotation_seed: int = 0
    prefix_tokens: tuple[int, ...] = ()  # empty: no prefix
    lm_head: bool = True
    balance: bool = False  # SiLU·up operand balancing (conversion/balance.py), opt-in
    weight_bits: int | None = None  # decoder linears fake-quantized to 8 or 4 bits; None: full

    def __post_init__(self) -> None:
        check_weight_bits(self.weight_bits)


@dataclass
class SpikingModel:
    """A (rotated) base model plus one neuron per site; the surgery is installed on demand."""

    model: torch.nn.Module
    tokenizer: object
    spec: ConversionSpec
    table: CodeTable
    sites: list[str]
    down_rotation: OnlineRotation | None
    prefix: Prefix | None
    report: dict = field(default_factory=dict)
    silu_scales: Tensor | None = None
    loss_curve: Tensor | None = None  # [S, steps] of training (Figure 4); None once reloaded
    loss_phases: list[str] = field(default_factory=list)

    def coded(self, mask_strength: int = 0) -> SpikingSurgery:
        """The fast equivalent path: every site replaced by its neuron's value (with spike
        masking of ``mask_strength``, see ``coding.neuron.mask_window``)."""
        return self.surgery(Coder(self.table, self.sites, mask_strength=mask_strength))

    @torch.no_grad()
    def logits(self, tokens: Tensor) -> Tensor:
        """Logits for ``tokens`` [B, S] run after the prefix, under whatever surgery is
        installed (none: the ANN's own forward)."""
        cache = self.prefix.cache_for(len(tokens)) if self.prefix is not None else None
        return self.model(input_ids=tokens, cache=cache, use_cache=cache is not None).logits

    def analog(self) -> SpikingSurgery:
        """The prepared ANN (rotations applied, no neurons), for sanity checks."""
        return self.surgery(Passthrough())

    def surgery(self, handler: SiteHandler) -> SpikingSurgery:
        """Any handler on this model's sites, with its rotation and balancing."""
        return SpikingSurgery(
            self.model, handler, self.down_rotation, self.spec.lm_head, self.silu_scales
        )


def prepare(
    model, spec: ConversionSpec, silu_scales: Tensor | None = None
) -> tuple[OnlineRotation | None, Prefix | None]:
    """Apply the spec's rotation, weight quantization (of the rotated weights) and the given
    balancing in place, in that order on conversion and on load; build the prefix cache."""
    down = None
    if spec.rotate:
        rotate_model(model, spec.rotation_seed, online_down=True)
        down = OnlineRotation(model.config.intermediate_size, spec.rotation_seed)
    if spec.weight_bits is not None:
        quantize_model(model, spec.weight_bits)
    if silu_scales is not None:
        fold_up_scales(model, silu_scales)
    return down, prepare_prefix(model, spec, down, silu_scales)


def prepare_prefix(model, spec: ConversionSpec, down, silu_scales) -> Prefix | None:
    """The prefix's KV cache, computed once by the prepared ANN (no neurons)."""
    if not spec.prefix_tokens:
        return None
    with SpikingSurgery(model, Passthrough(), down, False, silu_scales):
        return build_prefix(model, list(spec.prefix_tokens))


@dataclass
class Calibrated:
    """A prepared model with every site's samples: what all methods and timesteps share."""

    model: torch.nn.Module
    tokenizer: object
    spec: ConversionSpec  # method/timesteps/grains are filled in by ``fit_spiking``
    sites: list[str]
    down_rotation: OnlineRotation | None
    prefix: Prefix | None
    silu_scales: Tensor | None
    train: torch.Tensor  # [S, N]
    heldout: torch.Tensor  # [S, N]
    seconds: float
    outliers: list[dict]


def calibrate(
    model,
    tokenizer,
    sampling: SamplingSettings,
    rotate: bool = True,
    prefix_top: int | None = 3,
    lm_head: bool = True,
    progress: bool = True,
    balance: bool = False,
    weight_bits: int | None = None,
) -> Calibrated:
    """Steps 1-2: rotation, weight quantization and prefix (``model`` is modified in place),
    then site samples of the model as prepared (so quantized weights shape the samples)."""
    check_weight_bits(weight_bits)
    start = time.perf_counter()
    texts = read_texts(sampling.calibration)
    windows = token_batches(tokenizer, texts, sampling.sequences, sampling.seq_len, add_bos=False)
    prefix_tokens: tuple[int, ...] = ()
    outliers = []
    if prefix_top is not None:
        search = find_outlier_tokens(model, tokenizer, windows, prefix_top, progress=progress)
        prefix_tokens = tuple(prefix_token_ids(tokenizer, search.token_ids))
        outliers = [asdict(t) for t in search.tokens[: 2 * prefix_top]]
    spec = ConversionSpec(
        rotate=rotate,
        rotation_seed=sampling.seed,
        prefix_tokens=prefix_tokens,
        lm_head=lm_head,
        balance=balance,
        weight_bits=weight_bits,
    )
    down, prefix = prepare(model, spec)
    scales = None
    if balance:
        peaks = ChannelPeaks(model.config.num_hidden_layers)
        with SpikingSurgery(model, peaks, down, False):
            perplexity(model, windows[:BALANCE_WINDOWS], prefix, progress=False)
        scales = peaks.scales()
        fold_up_scales(model, scales)
        prefix = prepare_prefix(model, spec, down, scales)  # exactly as on load
    sites = [s.name for s in spiking_sites(model, lm_head)]
    observer = Observer(sites, 2 * sampling.samples, sampling.seed)
    with SpikingSurgery(model, observer, down, lm_head, scales):
        perplexity(model, windows, prefix, progress=progress)
    train, heldout = split_samples(observer.samples(), sites, sampling)
    seconds = time.perf_counter() - start
    return Calibrated(
        model, tokenizer, spec, sites, down, prefix, scales, train, heldout, seconds, outliers
    )


def fit_spiking(calibrated: Calibrated, fit: FitSettings, progress: bool = True) -> SpikingModel:
    """Step 3: train (or set) one neuron per site and score it on the held-out samples."""
    c = calibrated
    spec = replace(c.spec, method=fit.method, timesteps=fit.timesteps, grains=fit.grains)
    result = fit_codes(c.train, fit, progress)
    scores = score_sites(result.table, c.train, c.heldout)
    report = {
        "sites": [
            {"name": name, **{k: float(v[i]) for k, v in scores.items()}}
            for i, name in enumerate(c.sites)
        ],
        "mean_ratio": float(scores["ratio"].mean()),
        "seconds": {"calibration": c.seconds, "training": result.seconds},
        "spec": asdict(spec),
        "outlier_tokens": c.outliers,
        "prefix_seconds": c.prefix.seconds if c.prefix is not None else 0.0,
    }
    return SpikingModel(
        c.model,
        c.tokenizer,
        spec,
        result.table,
        c.sites,
        c.down_rotation,
        c.prefix,
        report,
        c.silu_scales,
        result.loss_curve,
        result.loss_phases,
    )


def convert(
    model,
    tokenizer,
    fit: FitSettings,
    sampling: SamplingSettings,
    progress: bool = True,
    **preparation,
) -> SpikingModel:
    """Convert ``model`` (modified in place) into a spiking model; see the module docstring.
    ``preparation`` holds ``calibrate``'s options (rotate, prefix_top, lm_head, balance,
    weight_bits), passed through unchanged."""
    calibrated = calibrate(model, tokenizer, sampling, progress=progress, **preparation)
    return fit_spiking(calibrated, fit, progress)
