"""What a conversion is asked to do: which neuron, how many timesteps and grains, how it
trains, and where the calibration samples come from. Plain values, checked on construction,
shared by the CLI, the jobs and the comparison grid; this module imports nothing of
phasecode's but its errors (the bottom floor, docs/architecture.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from phasecode.errors import PhasecodeError

METHODS = ("mgpc", "las", "spikedattention", "ttfs", "rate", "phase")
CODES = ("binary", "signed-digit")  # spikes carry x's sign only | may also fire −1 (neuron.py)


def default_code(method: str) -> str:
    """The neuron a conversion trains unless told otherwise: signed-digit for mgpc (at T=6 it
    keeps the perplexity the binary code loses, docs/results-reconstruct.md), binary for the
    fixed-code baselines, which train nothing."""
    return "signed-digit" if method == "mgpc" else "binary"


# what a site's neuron minimises: its samples' squared error, or that error weighted by the
# model loss's squared gradient at each value (E[g² | x], conversion/sensitivity.py)
OBJECTIVES = ("mse", "fisher")
# after training: "block" tunes each decoder layer's neurons on its output, "output" every
# neuron together on the model's next-token distribution (conversion/reconstruct.py)
RECONSTRUCTIONS = ("none", "block", "output")
# how far a trained neuron reaches, as a power of its shortfall (the largest |x| its site
# showed in calibration over the neuron's saturation) by which θ, h and d are scaled
# together: "fitted" keeps the squared-error fit's range, which clips the rare large values a
# sample of the site barely holds, though they cost perplexity far beyond their share of the
# squared error; "peak" never saturates on calibration; a wider neuron is coarser, and fewer
# steps make that cost weigh more, so "auto" keeps the strength whose coded model has the
# lowest calibration loss (docs/method.md#a-neurons-range)
RANGE_STRENGTHS = {"fitted": 0.0, "halfway": 0.5, "peak": 1.0}
NEURON_RANGES = ("auto", *RANGE_STRENGTHS)
PROBS_BIAS = 64.0  # the κ measured best for --probs-bias at T=6 on SmolLM2 (docs/method.md)
PHASE_LIMIT = 32  # T above this makes 2^T levels meaningless in float32
BUDGET_MODES = ("price", "knapsack")
# where the price mode's per-site loss sensitivity comes from: "fisher" (½·F_s·MSE_s alone) or
# "measured" (that, corrected per site kind by the loss each kind's neurons add to the coded
# model; simulation.budget). None: measured in price mode, fisher in knapsack mode
BUDGET_SENSITIVITIES = ("measured", "fisher")
TTFS_TIMESTEPS = 128  # App. D.1: TTFSFormer is compared at its own T = 128
MAX_TIMESTEPS = (
    TTFS_TIMESTEPS  # TTFS coding runs up to T=128 (TTFSFormer); phase codes are limited by the CLI
)


def validate_timesteps(timesteps: int, limit: int = MAX_TIMESTEPS) -> int:
    """Return ``timesteps`` if it is an integer in 1..limit, else raise a user-facing error."""
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or not 1 <= timesteps <= limit:
        raise PhasecodeError(f"timesteps must be an integer in 1..{limit}, got {timesteps!r}")
    return timesteps


MODES = ("alternating", "joint", "coupled")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of Alg. 1 (N, N1, N2, η1, η2) and Alg. 2 (N_α, η_α)."""

    rounds: int = 40  # N
    threshold_steps: int = 4  # N1, steps on {h, θ}
    base_steps: int = 8  # N2, steps on B (cheap: exact quadratic, see neurons.py)
    lr_threshold: float = 0.03  # η1, relative to each step's start value
    lr_base: float = 0.03  # η2
    sharpness: float = 4.0  # surrogate sigmoid slope, in units of 1/d(t)
    mode: str = "alternating"
    search_steps: int = 40  # N_α
    lr_alpha: float = 0.1  # η_α
    search_samples: int = 512  # samples per site used during the allocation search
    # samples per site in each θ/h step of alternating/coupled training (consecutive slices in
    # turn; reservoir samples are in random order); None: all. B steps and the kept-best
    # choice always see every sample. 2500 of 10k: 4× cheaper steps at the same conversion
    # error (docs/method.md#training-eq-10-alg-1)
    batch_samples: int | None = 2500

    def __post_init__(self) -> None:
        if self.batch_samples is not None and self.batch_samples < 1:
            raise PhasecodeError(
                f"--batch-samples must be a count >= 1 or all, got {self.batch_samples}"
            )
        if self.mode not in MODES:
            raise PhasecodeError(f"unknown training mode {self.mode!r}; choose from {MODES}")


@dataclass(frozen=True)
class SamplingSettings:
    """Where activation samples come from and how outliers are kept out of them."""

    samples: int = 10_000  # training samples per site (as many again are held out)
    calibration: Path | None = None  # None: the bundled C4 sample (calibration.text)
    sequences: int = 16
    seq_len: int = 256
    prefix_bos: bool = True  # prepend BOS and leave it out of the samples (prefix token)
    rotate_down: bool = True  # online Hadamard rotation of the down_proj input
    seed: int = 0


@dataclass(frozen=True)
class FitSettings:
    method: str = "mgpc"
    timesteps: int = 8
    grains: int = 2
    train: TrainConfig = field(default_factory=TrainConfig)
    code: str | None = None  # None: the method's own (default_code)
    objective: str = "mse"
    # κ of a κ·(mean error)² term for the attention-probability sites (training/objective.py);
    # 0: plain objective
    probs_bias: float = 0.0
    # choose κ ∈ {0, PROBS_BIAS} by the coded model's calibration loss (--probs-bias auto)
    probs_bias_auto: bool = False
    neuron_range: str = NEURON_RANGES[0]

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            choices = ", ".join(METHODS)
            raise PhasecodeError(f"unknown method {self.method!r}; choose from {choices}")
        if self.code is None:
            object.__setattr__(self, "code", default_code(self.method))
        if self.code not in CODES:
            raise PhasecodeError(f"unknown code {self.code!r}; choose from {', '.join(CODES)}")
        if self.code != "binary" and self.method != "mgpc":
            raise PhasecodeError(f"--code {self.code} trains its neurons: it needs --method mgpc")
        if self.objective not in OBJECTIVES:
            raise PhasecodeError(
                f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}"
            )
        if not (math.isfinite(self.probs_bias) and self.probs_bias >= 0):
            raise PhasecodeError(f"--probs-bias must be a number >= 0, got {self.probs_bias}")
        if self.probs_bias_auto and self.probs_bias:
            raise PhasecodeError("--probs-bias is either auto or a number, not both")
        if (self.probs_bias or self.probs_bias_auto) and self.method != "mgpc":
            raise PhasecodeError("--probs-bias trains its neurons: it needs --method mgpc")
        if self.objective != "mse" and self.method != "mgpc":
            raise PhasecodeError(
                f"--objective {self.objective} trains its neurons: it needs --method mgpc"
            )
        if self.neuron_range not in NEURON_RANGES:
            choices = ", ".join(NEURON_RANGES)
            raise PhasecodeError(
                f"unknown neuron range {self.neuron_range!r}; choose from {choices}"
            )
        validate_timesteps(self.timesteps, TTFS_TIMESTEPS if self.method == "ttfs" else PHASE_LIMIT)
        if not 1 <= self.grains <= self.timesteps:
            raise PhasecodeError(f"grains must be in 1..T={self.timesteps}, got {self.grains}")


@dataclass(frozen=True)
class EnergyBudget:
    """Convert under a total energy budget (``simulation.budget``). ``ratio`` is the predicted
    SNN/ANN total energy at which to stop, on a ``context``-token window priced with the
    ``costs`` preset or file. ``mode`` "price": every site at T, and training finds the price
    of a spike that meets the budget; "knapsack": T per site (≥ ``min_timesteps``) chosen
    before training, spikes priced at the knapsack's price. ``sensitivity``: see
    ``BUDGET_SENSITIVITIES``."""

    ratio: float
    min_timesteps: int = 3
    context: int = 512
    costs: str = "45nm-fp32"
    mode: str = "price"
    sensitivity: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ratio) and self.ratio > 0):
            raise PhasecodeError(f"an energy budget must be a number > 0, got {self.ratio}")
        if self.min_timesteps < 1:
            raise PhasecodeError(f"--min-timesteps must be >= 1, got {self.min_timesteps}")
        if self.context < 1:
            raise PhasecodeError(f"the energy context must be >= 1 token, got {self.context}")
        if self.mode not in BUDGET_MODES:
            raise PhasecodeError(
                f"unknown budget mode {self.mode!r}; choose from {', '.join(BUDGET_MODES)}"
            )
        if self.sensitivity is not None and self.sensitivity not in BUDGET_SENSITIVITIES:
            raise PhasecodeError(
                f"unknown budget sensitivity {self.sensitivity!r}; choose from "
                f"{', '.join(BUDGET_SENSITIVITIES)}"
            )
        if self.sensitivity == "measured" and self.mode != "price":
            raise PhasecodeError("a measured budget sensitivity needs --budget-mode price")

    @property
    def measures_sensitivity(self) -> bool:
        """Whether the price mode corrects the Fisher sensitivity by measurement."""
        return self.mode == "price" and self.sensitivity in (None, "measured")
