"""The conversion lifecycle: prepare outliers → calibrate every site → train → spiking model.

1. the prefix chosen by measurement (``inference/prefix_choice.py``, remembered per model by
   ``inference/prefix_cache.py``); Hadamard rotations
   (fold norms, rotate the residual stream, online rotation before ``down_proj``, per-head
   rotations of Q/K after RoPE and of V), optionally weight quantization of the rotated
   decoder linears (``models/quantize.py``); the prefix's KV cache computed once by that ANN;
2. optionally the SiLU·up operands balanced per channel (``balance.py``); calibration windows run
   through the model with an ``Observer`` on every site (after the prefix, so no site sees
   the prefix tokens' massive activations; their cached K/V pass the k/v neurons on use);
3. all neurons trained in one batch (``training.fit.fit_codes``); under an energy budget
   (``simulation.budget``) each site has its own T and training prices its spikes;
4. the result is a ``SpikingModel`` whose ``coded()`` surgery is the fast equivalent path.
A converted model is fully described by its ``ConversionSpec`` and code table, so an artifact
stores only those and rebuilds the rest from the base model on load.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from phasecode.cache.digests import tensor_digest
from phasecode.cache.fingerprint import model_fingerprint
from phasecode.calibration.histograms import site_histograms
from phasecode.calibration.observers import hooks
from phasecode.calibration.sampling import split_samples
from phasecode.calibration.text import read_texts, token_batches
from phasecode.coding.table import CodeTable, concat_tables
from phasecode.conversion.balance import ChannelPeaks, fold_up_scales
from phasecode.conversion.handlers import Coder, Observer, Passthrough, SiteHandler
from phasecode.conversion.sensitivity import SENSITIVITY_WINDOWS, Sensitivity, site_sensitivity
from phasecode.conversion.surgery import SpikingSurgery
from phasecode.errors import PhasecodeError
from phasecode.inference.nll import perplexity
from phasecode.inference.prefix import Prefix, build_prefix, run_after
from phasecode.inference.prefix_cache import choose_prefix_cached
from phasecode.inference.prefix_choice import AUTO, SELECTION_WINDOWS, PrefixRequest, measure_prefix
from phasecode.models.adapters import adapter_for
from phasecode.models.hadamard import OnlineRotation
from phasecode.models.quantize import check_weight_bits, quantize_model
from phasecode.models.rotation import (
    fold_value_rotation,
    head_rotation,
    post_norm_rotation,
    rotate_model,
)
from phasecode.models.sites import LM_HEAD, site_kind, spiking_sites
from phasecode.settings import PROBS_BIAS, RANGE_STRENGTHS, FitSettings, SamplingSettings
from phasecode.training.alternating import SpikeBudget
from phasecode.training.fit import (
    FitResult,
    fit_codes,
    largest_output,
    reach_peaks,
    score_sites,
)

# windows per calibration forward: each site's reservoir costs ~2 ms per push whatever its
# size, so fewer, larger pushes (16 windows: ~7 s less on SmolLM2's 301 sites)
CALIBRATION_BATCH = 4
PROBS_BIAS_WINDOWS = 4  # calibration windows --probs-bias auto scores each κ on
SCORING_WINDOWS = 8  # unsampled calibration windows a coded model is scored on in conversion
RANGE_PRIOR = "halfway"  # what --neuron-range auto keeps unless another range clearly wins,
RANGE_PRIOR_TIMESTEPS = 6  # from this T up (below it: the lowest mean NLL, no prior)
FAR_NLL = math.log(2)  # nats per token: a coded model at twice the prepared ANN's perplexity
RANGE_EVIDENCE = 2.0  # "clearly": by this many standard errors of the per-window difference
BALANCE_WINDOWS = 4  # calibration windows used to measure the per-channel operand ranges
PROFILE_POSITIONS = 64  # positions kept in the outlier picture


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
    # per-head Hadamard on Q and K after RoPE (online) and on V (folded into v/o_proj)
    rotate_heads: bool = False
    code: str = "binary"  # the neuron: binary or signed-digit (settings.CODES)

    def __post_init__(self) -> None:
        check_weight_bits(self.weight_bits)


@dataclass
class Prepared:
    """What preparing a model adds besides its rewritten weights: the online rotations, the
    prefix cache and the SiLU·up balancing scales; the surgery needs all of them."""

    down_rotation: OnlineRotation | None = None
    head_rotation: OnlineRotation | None = None
    prefix: Prefix | None = None
    silu_scales: Tensor | None = None
    post_norm_rotation: OnlineRotation | None = None  # the residual's, after post-norms

    def surgery(self, model, handler: SiteHandler, lm_head: bool) -> SpikingSurgery:
        return SpikingSurgery(
            model,
            handler,
            self.down_rotation,
            lm_head,
            self.silu_scales,
            self.head_rotation,
            self.post_norm_rotation,
        )


@dataclass
class SpikingModel:
    """A (rotated) base model plus one neuron per site; the surgery is installed on demand."""

    model: torch.nn.Module
    tokenizer: object
    spec: ConversionSpec
    table: CodeTable
    sites: list[str]
    prepared: Prepared
    report: dict = field(default_factory=dict)
    loss_curve: Tensor | None = None  # [S, steps] of training (Figure 4); None once reloaded
    loss_phases: list[str] = field(default_factory=list)
    histograms: dict[str, Tensor] = field(default_factory=dict)  # of the calibration samples
    _coders: dict[int, Coder] = field(default_factory=dict, repr=False)

    @property
    def prefix(self) -> Prefix | None:
        return self.prepared.prefix

    @property
    def down_rotation(self) -> OnlineRotation | None:
        return self.prepared.down_rotation

    @property
    def head_rotation(self) -> OnlineRotation | None:
        return self.prepared.head_rotation

    @property
    def silu_scales(self) -> Tensor | None:
        return self.prepared.silu_scales

    def coded(self, mask_strength: int = 0) -> SpikingSurgery:
        """The fast equivalent path: every site replaced by its neuron's value (with spike
        masking of ``mask_strength``, see ``coding.neuron.mask_window``)."""
        return self.surgery(self.coder(mask_strength))

    def coder(self, mask_strength: int = 0) -> Coder:
        """The neurons as a site handler, built once per masking strength (it keeps each
        site's fused kernel arguments, so later forwards do not rebuild them)."""
        if mask_strength not in self._coders:
            self._coders[mask_strength] = Coder(self.table, self.sites, mask_strength=mask_strength)
        return self._coders[mask_strength]

    @torch.no_grad()
    def logits(self, tokens: Tensor) -> Tensor:
        """Logits for ``tokens`` [B, S] run after the prefix, under whatever surgery is
        installed (none: the ANN's own forward)."""
        return run_after(self.model, self.prefix, tokens).logits

    def analog(self) -> SpikingSurgery:
        """The prepared ANN (rotations applied, no neurons), for sanity checks."""
        return self.surgery(Passthrough())

    def analog_identity(self) -> dict:
        """What ``analog()``'s forward computes besides the (rotated) weights and the prefix:
        the online rotations and the balancing scales, for remembered scores
        (``inference.score_cache``)."""
        scales = self.silu_scales
        return {
            "model": "prepared ANN",
            "rotate": self.spec.rotate,
            "rotation_seed": self.spec.rotation_seed,
            "rotate_heads": self.spec.rotate_heads,
            "weight_bits": self.spec.weight_bits,
            "silu_scales": None if scales is None else tensor_digest(scales),
        }

    def surgery(self, handler: SiteHandler) -> SpikingSurgery:
        """Any handler on this model's sites, with its rotations and balancing."""
        return self.prepared.surgery(self.model, handler, self.spec.lm_head)


def prepare(model, spec: ConversionSpec, silu_scales: Tensor | None = None) -> Prepared:
    """Apply the spec's rotations, weight quantization (of the rotated weights) and the given
    balancing in place, in that order on conversion and on load; build the prefix cache."""
    adapter_for(model).check(model.config)
    prepared = Prepared(silu_scales=silu_scales)
    # its weights are no longer the base model's: measurements through it name the base
    # model's fingerprint and the preparation (``SpikingModel.analog_identity``)
    model.phasecode_base_fingerprint = model_fingerprint(model)
    model.phasecode_prepared = True
    if spec.rotate:
        prepared.down_rotation = rotate_model(model, spec.rotation_seed, online_down=True)
        prepared.post_norm_rotation = post_norm_rotation(model, spec.rotation_seed)
    if spec.rotate_heads:
        fold_value_rotation(model, spec.rotation_seed)
        head_dim = adapter_for(model).head_dim(model.config)
        prepared.head_rotation = head_rotation(head_dim, spec.rotation_seed)
    if spec.weight_bits is not None:
        quantize_model(model, spec.weight_bits)
    if silu_scales is not None:
        fold_up_scales(model, silu_scales)
    prepared.prefix = prepare_prefix(model, spec, prepared)
    return prepared


def prepare_prefix(model, spec: ConversionSpec, prepared: Prepared) -> Prefix | None:
    """The prefix's KV cache, computed once by the prepared ANN (no neurons)."""
    if not spec.prefix_tokens:
        return None
    with prepared.surgery(model, Passthrough(), lm_head=False):
        return build_prefix(model, list(spec.prefix_tokens))


@dataclass
class Calibrated:
    """A prepared model with every site's samples: what all methods and timesteps share."""

    model: torch.nn.Module
    tokenizer: object
    spec: ConversionSpec  # method/timesteps/grains are filled in by ``fit_spiking``
    sites: list[str]
    prepared: Prepared
    train: torch.Tensor  # [S, N]
    heldout: torch.Tensor  # [S, N]
    seconds: float
    prefix_choice: dict  # why the prefix is what it is (``PrefixChoice.report``)
    outliers_profile: dict  # ``outlier_profile``: the report's outlier picture
    windows: Tensor  # the calibration windows [n, L]
    peaks: Tensor  # [S] the largest |x| each site showed in calibration
    unseen: Tensor | None  # windows of the calibration text after ``windows`` (or None)
    _sensitivity: Sensitivity | None = None
    _prepared_nll: Tensor | None = None

    def prepared_nll(self) -> Tensor:
        """[W] float64 on the CPU: mean NLL per token of each ``scoring_windows`` window
        under the prepared ANN, the reference coded models are scored against in conversion
        (computed once)."""
        if self._prepared_nll is None:
            windows, _ = scoring_windows(self)
            self._prepared_nll = handled_nll(self, Passthrough(), windows).double().cpu()
        return self._prepared_nll

    def sensitivity(self, progress: bool = True) -> Sensitivity:
        """Each site's loss sensitivity (``conversion.sensitivity``), measured once on the
        calibration windows through the prepared ANN."""
        if self._sensitivity is None:
            self._sensitivity = site_sensitivity(
                self.model,
                lambda handler: self.prepared.surgery(self.model, handler, self.spec.lm_head),
                self.sites,
                self.windows[:SENSITIVITY_WINDOWS],
                self.prepared.prefix,
                self.train,
                progress,
            )
        return self._sensitivity


def calibrate(
    model,
    tokenizer,
    sampling: SamplingSettings,
    rotate: bool = True,
    prefix: PrefixRequest = AUTO,
    lm_head: bool = True,
    progress: bool = True,
    balance: bool = False,
    weight_bits: int | None = None,
    rotate_heads: bool | None = None,
    texts: list[str] | None = None,
) -> Calibrated:
    """Steps 1-2: prefix choice, rotations, weight quantization (``model`` is modified in
    place), then site samples of the model as prepared (so quantized weights shape them).
    ``rotate_heads`` (default: as ``rotate``) switches the per-head Q/K/V rotations apart;
    ``texts`` (default: read from ``sampling.calibration``) are the calibration documents."""
    check_weight_bits(weight_bits)
    start = time.perf_counter()
    texts = read_texts(sampling.calibration) if texts is None else texts
    windows, unseen = calibration_windows(tokenizer, texts, sampling)
    device = next(model.parameters()).device
    windows = windows.to(device)
    unseen = None if unseen is None else unseen.to(device)
    if prefix.mode == "auto":
        choice = choose_prefix_cached(model, tokenizer, windows, progress)
        prefix_tokens, prefix_report = choice.token_ids, choice.report()
        before = choice.plain_peaks
    else:
        if prefix.mode == "none":
            prefix_tokens, why = (), "no prefix (--no-prefix)"
        else:
            prefix_tokens = prefix.given_ids(tokenizer, model.config.vocab_size)
            why = f"given ({prefix.mode})"
        prefix_report = {"chosen": list(prefix_tokens), "reason": why}
        before = measure_prefix(model, windows[:SELECTION_WINDOWS], ())[1]
    spec = ConversionSpec(
        rotate=rotate,
        rotation_seed=sampling.seed,
        prefix_tokens=prefix_tokens,
        lm_head=lm_head,
        balance=balance,
        weight_bits=weight_bits,
        rotate_heads=rotate if rotate_heads is None else rotate_heads,
    )
    prepared = prepare(model, spec)
    if balance:
        peaks = ChannelPeaks(model.config.num_hidden_layers)
        with prepared.surgery(model, peaks, lm_head=False):
            perplexity(model, windows[:BALANCE_WINDOWS], prepared.prefix, progress=False)
        prepared.silu_scales = peaks.scales()
        fold_up_scales(model, prepared.silu_scales)
        prepared.prefix = prepare_prefix(model, spec, prepared)  # exactly as on load
    sites = [s.name for s in spiking_sites(model, lm_head)]
    observer = Observer(sites, 2 * sampling.samples, sampling.seed)
    observe_sites(model, prepared, observer, windows, lm_head, progress)
    train, heldout = split_samples(observer.samples(), sites, sampling)
    seconds = time.perf_counter() - start
    after = torch.stack([observer.down_peaks[s] for s in sites if site_kind(s) == "down"])
    outliers = outlier_profile(before.amax(1), after, len(prefix_tokens))
    return Calibrated(
        model,
        tokenizer,
        spec,
        sites,
        prepared,
        train,
        heldout,
        seconds,
        prefix_report,
        outliers,
        windows,
        observer.peaks(sites),
        unseen,
    )


def calibration_windows(
    tokenizer, texts: list[str], sampling: SamplingSettings
) -> tuple[Tensor, Tensor | None]:
    """The calibration windows, and ``SCORING_WINDOWS`` more cut from the text after them,
    which no sample or peak comes from (None where the text is too short for them)."""
    n, length = sampling.sequences, sampling.seq_len
    try:
        cut = token_batches(tokenizer, texts, n + SCORING_WINDOWS, length, add_bos=False)
    except PhasecodeError:
        return token_batches(tokenizer, texts, n, length, add_bos=False), None
    return cut[:n], cut[n:]


@torch.no_grad()
def observe_sites(
    model, prepared: Prepared, observer: Observer, windows: Tensor, lm_head: bool, progress: bool
) -> None:
    """The calibration forward: every site's values reach ``observer``, and no logits are
    computed (they are not needed, and the head is ~20 % of SmolLM2's FLOPs): the head's
    input is observed at the final norm's output, all of which it would read, and the model
    is asked for the last position's logits only."""
    observe_head = {}
    if lm_head:
        final_norm = adapter_for(model).final_norm
        observe_head[final_norm] = lambda module, args, output: observer(LM_HEAD, output)
    with prepared.surgery(model, observer, lm_head=False), hooks(model, observe_head, pre=False):
        for batch in tqdm(
            windows.split(CALIBRATION_BATCH), desc="calibration", unit="batch", disable=not progress
        ):
            run_after(model, prepared.prefix, batch, logits_to_keep=1)


def outlier_profile(before: Tensor, after: Tensor, prefix_length: int) -> dict:
    """Peak |x| at the down_proj inputs per layer and position, for the report's outlier
    picture: the plain model's (position 0 is the window's first token) against the prepared
    model's after rotation and prefix (positions of the window, after the prefix)."""
    positions = min(PROFILE_POSITIONS, before.shape[-1], after.shape[-1])
    return {
        "site": "down_proj input",
        "positions": list(range(positions)),
        "before": before[:, :positions].tolist(),
        "after": after[:, :positions].tolist(),
        "after_label": f"after rotation + prefix of {prefix_length}",
    }


def probs_bias(sites: list[str], fit: FitSettings) -> Tensor | None:
    """[S] κ of the mean-error term: ``fit.probs_bias`` at the attention-probability sites, 0
    elsewhere (None when off)."""
    if not fit.probs_bias:
        return None
    probs = [site_kind(site) == "probs" for site in sites]
    return torch.tensor(probs, dtype=torch.float64) * fit.probs_bias


def choose_probs_bias(
    c: Calibrated,
    fit: FitSettings,
    plain: FitResult,
    train: Tensor,
    steps: Tensor | None,
    spike_costs: Tensor | None,
    weight: Tensor | None,
) -> tuple[FitResult, dict]:
    """--probs-bias auto: the probability sites trained again with κ = ``PROBS_BIAS``, and the
    κ (0 or that) whose coded model has the lower mean NLL on ``PROBS_BIAS_WINDOWS``
    calibration windows is kept. κ helps one model and hurts another (docs/method.md), so it
    is measured on each, as the prefix is. Sites train independently, so the other rows and
    the probability rows of κ = 0 are those of ``plain``."""
    kinds = [site_kind(site) == "probs" for site in c.sites]
    if not any(kinds):
        return plain, {"chosen": 0.0, "reason": "no attention-probability sites"}
    index = torch.tensor([i for i, probs in enumerate(kinds) if probs], device=train.device)
    rest = torch.tensor([i for i, probs in enumerate(kinds) if not probs], device=train.device)

    def rows(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[index.to(t.device)]

    kappa = torch.full((len(index),), PROBS_BIAS, dtype=train.dtype, device=train.device)
    biased = fit_codes(
        train[index], fit, False, rows(steps), rows(spike_costs), rows(weight), kappa
    )
    order = torch.cat([rest, index]).argsort()
    table = concat_tables([plain.table.select(rest), biased.table]).select(order)
    curve = None
    if plain.loss_curve is not None:
        curve = torch.cat([plain.loss_curve[rest], biased.loss_curve])[order]
    candidates = {
        0.0: plain,
        PROBS_BIAS: FitResult(table, curve, plain.seconds + biased.seconds, plain.loss_phases),
    }
    windows = c.windows[:PROBS_BIAS_WINDOWS]
    losses = {
        value: float(coded_nll(c, candidate.table, windows).mean())
        for value, candidate in candidates.items()
    }
    chosen = min(losses, key=losses.get)
    choice = {
        "chosen": chosen,
        "reason": f"lower mean NLL of the coded model on {len(windows)} calibration windows",
        "loss": {f"{value:g}": loss for value, loss in losses.items()},
    }
    return candidates[chosen], choice


def coded_nll(
    c: Calibrated, table: CodeTable, windows: Tensor, only: Collection[str] | None = None
) -> Tensor:
    """Mean NLL per token of each of ``windows`` [W] under the prepared model with
    ``table``'s neurons (only at the sites in ``only``, when given)."""
    return handled_nll(c, Coder(table, c.sites, only=only), windows)


def handled_nll(c: Calibrated, handler: SiteHandler, windows: Tensor) -> Tensor:
    """Mean NLL per token of each of ``windows`` [W] under the prepared model with
    ``handler`` at its sites."""
    with c.prepared.surgery(c.model, handler, c.spec.lm_head):
        scored = perplexity(c.model, windows, c.prepared.prefix, CALIBRATION_BATCH, False)
    return scored.nll / scored.tokens


def scoring_windows(c: Calibrated) -> tuple[Tensor, str]:
    """Windows to score a coded model on during conversion, and where they come from: the
    calibration text after the sampled windows (what no neuron was fitted to), or where the
    text is too short, ``SCORING_WINDOWS`` of the sampled windows themselves."""
    if c.unseen is not None:
        return c.unseen, "windows of calibration text after those sampled"
    return c.windows[:SCORING_WINDOWS], "of the sampled calibration windows"


def choose_range(c: Calibrated, fit: FitSettings, table: CodeTable) -> tuple[CodeTable, dict]:
    """The neurons widened toward their sites' calibration peaks as ``fit.neuron_range``
    says. "auto" codes the model with each of ``RANGE_STRENGTHS`` on calibration text the
    peaks did not come from (on the calibration windows themselves, which flatter the peak,
    only where the text is too short) and keeps ``RANGE_PRIOR`` unless another range has a
    clearly lower NLL there (``clear_winner``); below ``RANGE_PRIOR_TIMESTEPS`` it keeps the
    lowest."""
    peaks = c.peaks.to(table.weight.device)
    if fit.neuron_range != "auto":
        strength = RANGE_STRENGTHS[fit.neuron_range]
        return reach_peaks(table, peaks, strength), {"chosen": fit.neuron_range, "reason": "given"}
    windows, where = scoring_windows(c)
    candidates = {name: reach_peaks(table, peaks, s) for name, s in RANGE_STRENGTHS.items()}
    nll = {name: coded_nll(c, candidate, windows) for name, candidate in candidates.items()}
    prior = RANGE_PRIOR if fit.timesteps >= RANGE_PRIOR_TIMESTEPS else None
    chosen, evidence = clear_winner(nll, prior)
    rule = (
        "lowest mean NLL of the coded model"
        if prior is None
        else f"{prior} unless another range has a lower mean NLL of the coded model by more "
        f"than {RANGE_EVIDENCE:g} standard errors"
    )
    choice = {
        "chosen": chosen,
        "reason": f"{rule}, on {len(windows)} {where}",
        "loss": {name: float(values.mean()) for name, values in nll.items()},
        "prepared_ann_loss": float(c.prepared_nll().mean()),
        "evidence": evidence,
    }
    warn_if_far(choice["loss"][chosen] - choice["prepared_ann_loss"], fit.timesteps)
    return candidates[chosen], choice


def warn_if_far(gap: float, timesteps: int) -> None:
    """Warn when the coded model's NLL on calibration text is ``gap`` > ``FAR_NLL`` nats per
    token above the prepared ANN's: such a model is no approximation of the ANN, whatever
    else (a met energy budget) its report says."""
    if gap > FAR_NLL:
        warnings.warn(
            f"the coded model's perplexity on calibration text is x{math.exp(gap):.2f} the "
            f"prepared ANN's at T={timesteps}: its neurons do not approximate the model "
            "(under --energy-budget the spike price may have pushed sites far off their fit; "
            "docs/energy.md)",
            stacklevel=2,
        )


def clear_winner(nll: dict[str, Tensor], prior: str | None) -> tuple[str, float]:
    """The candidate with the lowest mean of its per-window NLLs [W] if it beats ``prior`` by
    more than ``RANGE_EVIDENCE`` standard errors of the paired per-window difference (or if
    there is no prior), else ``prior``; and that difference in standard errors (0: the prior
    is lowest, there is none, or one window gives no spread to judge by). Why a prior: at
    T >= 6 the ranges differ by well under 1 % of NLL on a few windows of calibration text,
    within the noise of which text they are, and on held-out text the halfway range was as
    good as or better than the fitted one wherever an unpriced conversion at those T was
    measured (docs/method.md); a spike price makes the fitted range clearly better, and that
    shows."""
    best = min(nll, key=lambda name: float(nll[name].mean()))
    if prior is None or best == prior:
        return best, 0.0
    difference = (nll[best] - nll[prior]).double()
    error = float(difference.std()) / math.sqrt(len(difference)) if len(difference) > 1 else 0.0
    if not error > 0:
        return prior, 0.0
    evidence = -float(difference.mean()) / error
    return (best if evidence > RANGE_EVIDENCE else prior), evidence


class Train(Protocol):
    """One training of every site's neuron (``fit_spiking``'s, for a ``FitStrategy``):
    ``steps`` and ``spike_costs`` (per site) give each site its own T and price its spikes,
    ``spike_budget`` finds that price in training."""

    def __call__(
        self,
        steps: Tensor | None = None,
        spike_costs: Tensor | None = None,
        spike_budget: SpikeBudget | None = None,
    ) -> SpikingModel: ...


class FitStrategy(Protocol):
    """How step 3 trains: it decides per-site T and spike prices (an energy budget:
    ``simulation.budget.budget_strategy``), runs ``train`` once or more, and fills in the
    report's account of what it chose."""

    def fit(
        self, calibrated: Calibrated, fit: FitSettings, progress: bool, train: Train
    ) -> SpikingModel: ...


def fit_spiking(
    calibrated: Calibrated,
    fit: FitSettings,
    progress: bool = True,
    strategy: FitStrategy | None = None,
) -> SpikingModel:
    """Step 3: train (or set) one neuron per site and score it on the held-out samples, every
    site at T, or as ``strategy`` decides."""

    def train(
        steps: Tensor | None = None,
        spike_costs: Tensor | None = None,
        spike_budget: SpikeBudget | None = None,
    ) -> SpikingModel:
        return _train(calibrated, fit, progress, steps, spike_costs, spike_budget)

    return train() if strategy is None else strategy.fit(calibrated, fit, progress, train)


def _train(
    calibrated: Calibrated,
    fit: FitSettings,
    progress: bool,
    steps: Tensor | None,
    spike_costs: Tensor | None,
    spike_budget: SpikeBudget | None,
) -> SpikingModel:
    c = calibrated
    spec = replace(
        c.spec, method=fit.method, timesteps=fit.timesteps, grains=fit.grains, code=fit.code
    )
    device = next(c.model.parameters()).device  # train where the model runs (a GPU: faster)
    train, heldout = c.train.to(device), c.heldout.to(device)
    weight = heldout_weight = None
    if fit.objective == "fisher":
        sensitivity = c.sensitivity(progress)
        weight, heldout_weight = sensitivity.weights(train), sensitivity.weights(heldout)
    bias = probs_bias(c.sites, fit)
    bias = None if bias is None else bias.to(train)
    result = fit_codes(train, fit, progress, steps, spike_costs, weight, bias, spike_budget)
    if result.prices:  # the probabilities' refit below keeps the price training found
        spike_costs = spike_costs * result.prices[-1]
    bias_choice = None
    if fit.probs_bias_auto:
        result, bias_choice = choose_probs_bias(c, fit, result, train, steps, spike_costs, weight)
    table, range_choice = choose_range(c, fit, result.table)
    sites = site_scores(c, table, heldout_weight)
    table = table.to(device="cpu")
    curve = result.loss_curve.cpu() if result.loss_curve is not None else None
    prefix = c.prepared.prefix
    report = {
        "sites": sites,
        "mean_ratio": sum(row["ratio"] for row in sites) / len(sites),
        "seconds": {"calibration": c.seconds, "training": result.seconds},
        "spike_prices": result.prices,
        "spec": asdict(spec),
        "objective": fit.objective,
        "probs_bias": fit.probs_bias if bias_choice is None else bias_choice["chosen"],
        "probs_bias_choice": bias_choice,
        "neuron_range_choice": range_choice,
        "prefix_choice": c.prefix_choice,
        "outliers_profile": c.outliers_profile,
        "prefix_seconds": prefix.seconds if prefix is not None else 0.0,
    }
    return SpikingModel(
        c.model,
        c.tokenizer,
        spec,
        table,
        c.sites,
        c.prepared,
        report,
        curve,
        result.loss_phases,
        site_histograms(torch.cat([c.train, c.heldout], 1)),
    )


def site_scores(
    c: Calibrated, table: CodeTable, heldout_weight: Tensor | None = None
) -> list[dict]:
    """The report's row per site: its neuron's held-out MSE, spikes and yardsticks
    (``score_sites``), the largest |x| the site showed in calibration and the neuron's
    largest output."""
    train, heldout = c.train.to(table.weight.device), c.heldout.to(table.weight.device)
    scores = score_sites(table, train, heldout, heldout_weight) | {
        "calibration_peak": c.peaks,
        "saturation": largest_output(table).cpu(),
    }
    return [
        {"name": name, **{k: float(v[i]) for k, v in scores.items()}}
        for i, name in enumerate(c.sites)
    ]


def convert(
    model,
    tokenizer,
    fit: FitSettings,
    sampling: SamplingSettings,
    progress: bool = True,
    **preparation,
) -> SpikingModel:
    """Convert ``model`` (modified in place) into a spiking model; see the module docstring.
    ``preparation`` holds ``calibrate``'s options (rotate, prefix, lm_head, balance,
    weight_bits), passed through unchanged."""
    calibrated = calibrate(model, tokenizer, sampling, progress=progress, **preparation)
    return fit_spiking(calibrated, fit, progress)
