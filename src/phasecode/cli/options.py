"""Option groups several commands share, each parsed and checked in one place, before any
model loads: the base model and where it runs, the neuron and training settings, the
calibration sampling, the prefix, and output paths."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch

from phasecode.calibration.text import DEFAULT_CALIBRATION
from phasecode.conversion.config import MIN_SAMPLES, ConfigError, ConversionConfig
from phasecode.errors import PhasecodeError
from phasecode.inference.prefix_choice import NO_PREFIX, PrefixRequest
from phasecode.models.devices import DTYPES, resolve_device, resolve_dtype
from phasecode.models.placement import Placement
from phasecode.models.quantize import WEIGHT_BITS
from phasecode.models.resolve import DEFAULT_MODEL
from phasecode.settings import (
    CODES,
    METHODS,
    MODES,
    OBJECTIVES,
    PROBS_BIAS,
    FitSettings,
    SamplingSettings,
    TrainConfig,
)


def add_placement(parser: argparse.ArgumentParser, dtype_default: str | None = "float32") -> None:
    """--device / --dtype; ``dtype_default`` None keeps an artifact's own dtype."""
    parser.add_argument(
        "--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N"
    )
    keep = " (default: the dtype it was converted in)" if dtype_default is None else ""
    parser.add_argument(
        "--dtype",
        default=dtype_default,
        choices=tuple(DTYPES),
        help=f"the model's weights and activations; neurons always fire in float32{keep}",
    )


def add_model(parser: argparse.ArgumentParser) -> None:
    """The base model to load and where: --model, --device, --dtype, --device-map."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a hub id, a local model directory, a .gguf file, or smollm2-135m (bundled)",
    )
    add_placement(parser)
    parser.add_argument(
        "--device-map",
        choices=("auto",),
        help="spread a model too large for one GPU over all GPUs and the CPU (accelerate)",
    )


def check_model(args: argparse.Namespace, where: Placement) -> None:
    """The --model exists, is readable and fits where it is asked to run (before any work)."""
    from phasecode.models.loading import check_fits

    check_fits(args.model, where.dtype or torch.float32, where.device, where.device_map)


def placement(args: argparse.Namespace) -> Placement:
    """The checked device and dtype (an artifact command's dtype may be None: keep its own)."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device) if args.dtype else None
    return Placement(device, dtype, getattr(args, "device_map", None))


def add_base_model(parser: argparse.ArgumentParser) -> None:
    """--base-model: where an artifact's base model is now, if it moved since conversion."""
    parser.add_argument(
        "--base-model",
        metavar="PATH",
        help="the base model the artifact was converted from, if it is no longer where the "
        "artifact says (a directory, a .gguf file or a hub id; its fingerprint is checked)",
    )


def check_base_model(args: argparse.Namespace) -> None:
    """A given --base-model must be a model (before any work)."""
    from phasecode.models.resolve import locate

    if args.base_model is not None:
        locate(args.base_model)


def add_conversion(parser: argparse.ArgumentParser) -> None:
    """What `convert` and `neurons` share: the model, the neuron and training settings and
    the calibration sampling."""
    add_model(parser)
    add_fit(parser)
    add_sampling(parser)


def add_fit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timesteps", "-T", type=int, default=8, help="timesteps T (1..32; ttfs: 1..128)"
    )
    parser.add_argument("--grains", type=int, default=2, help="number of bases (grains)")
    parser.add_argument(
        "--lr-threshold",
        type=float,
        default=TrainConfig.lr_threshold,
        help="η1 of Alg. 1 (steps on θ, h, relative to their start values)",
    )
    parser.add_argument("--rounds", type=int, default=TrainConfig.rounds, help="N of Alg. 1")
    parser.add_argument(
        "--batch-samples",
        type=_samples,
        default=TrainConfig.batch_samples,
        metavar="N|all",
        help="samples per site in each θ/h step of Alg. 1, in turn (all: every sample)",
    )
    parser.add_argument("--method", default="mgpc", choices=METHODS, metavar="|".join(METHODS))
    parser.add_argument(
        "--code",
        default=None,
        choices=CODES,
        metavar="|".join(CODES),
        help="mgpc neuron: spikes carry the input's sign (binary) or may also fire -1 to "
        "correct an overshoot (signed-digit, mgpc's default: fewer spikes, and at low T "
        "far closer to the ANN); the fixed-code baselines are binary",
    )
    _choice(
        parser,
        "--objective",
        OBJECTIVES,
        "mgpc training: each site's squared error (mse), or that error weighted by the "
        "loss's squared gradient at each value (fisher: one backward pass over the calibration)",
    )
    parser.add_argument(
        "--probs-bias",
        type=_kappa,
        default=0.0,
        metavar="KAPPA|auto",
        help="mgpc training: add KAPPA·(mean error)² at the attention-probability sites, so "
        f"the coded probabilities keep their mass (0: off; {PROBS_BIAS:g} helps SmolLM2 at "
        "T <= 8 but not Qwen2; auto: train both and keep the one whose coded model has the "
        "lower loss on calibration windows)",
    )
    _choice(
        parser,
        "--mode",
        MODES,
        "mgpc training: Alg. 1, all parameters at once (Table 6) or h = θ (Table 7)",
    )
    parser.add_argument(
        "--weight-bits",
        type=int,
        choices=WEIGHT_BITS,
        metavar="|".join(map(str, WEIGHT_BITS)),
        help="fake-quantize the decoder linears per output channel first (Table 8)",
    )


def _choice(parser: argparse.ArgumentParser, flag: str, choices: tuple, help: str) -> None:
    """An option among ``choices``, the first being the default, shown as a|b|c."""
    parser.add_argument(
        flag, default=choices[0], choices=choices, metavar="|".join(choices), help=help
    )


def _value_or_word(convert, word: str, meaning, what: str):
    """An argparse type: ``word`` (read as ``meaning``) or ``convert(text)``; the value itself
    is checked where the settings are built."""

    def parse(text: str):
        if text == word:
            return meaning
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or {word}, got {text!r}") from None

    return parse


_kappa = _value_or_word(float, "auto", "auto", "a number")  # --probs-bias
_samples = _value_or_word(int, "all", None, "a count")  # --batch-samples: all → None


# ConversionConfig fields set by `convert`'s options: the argparse dest of each
CONFIG_DESTS = {
    "method": "method",
    "timesteps": "timesteps",
    "grains": "grains",
    "code": "code",
    "objective": "objective",
    "probs_bias": "probs_bias",
    "mode": "mode",
    "lr_threshold": "lr_threshold",
    "rounds": "rounds",
    "batch_samples": "batch_samples",
    "weight_bits": "weight_bits",
    "samples": "samples",
    "sequences": "sequences",
    "seq_len": "calib_seq_len",
    "seed": "seed",
    "rotate": "no_rotate",
    "lm_head": "no_lm_head",
    "balance": "balance",
    "energy_budget": "energy_budget",
    "budget_mode": "budget_mode",
    "budget_sensitivity": "budget_sensitivity",
    "min_timesteps": "min_timesteps",
    "costs": "costs",
    "reconstruct": "reconstruct",
    "neuron_range": "neuron_range",
}
PREFIX_DESTS = ("no_prefix", "prefix", "prefix_ids")


def conversion_config(args: argparse.Namespace) -> ConversionConfig:
    """`convert`'s options as a ConversionConfig: the recipe of --config (if given) with the
    options typed on the command line over it; a bad value names its option."""
    explicit = getattr(args, "explicit", None)
    given = {
        field: _config_value(args, field, dest)
        for field, dest in CONFIG_DESTS.items()
        if explicit is None or dest in explicit
    }
    if explicit is None or explicit & set(PREFIX_DESTS):
        given["prefix"] = _config_prefix(prefix_request(args))
    recipe = {} if args.config is None else ConversionConfig.load(args.config).to_dict()
    try:
        return ConversionConfig.from_dict({**recipe, **given})
    except ConfigError as err:
        raise ConfigError(_with_flags(str(err))) from None


def _config_value(args: argparse.Namespace, field: str, dest: str):
    value = getattr(args, dest)
    if dest.startswith("no_"):
        return not value
    if field == "probs_bias" and value == "auto":
        return "auto"
    return value


def _config_prefix(request: PrefixRequest):
    return {"auto": "auto", "none": None, "text": request.text, "ids": request.ids}[request.mode]


def _with_flags(message: str) -> str:
    """A config error as the CLI user typed it: ConversionConfig.seq_len → --seq-len."""

    def flag(match: re.Match) -> str:
        field = match.group(1)
        dest = CONFIG_DESTS.get(field)
        if dest is None or dest.startswith("no_"):
            return match.group(0)
        return "--seq-len" if field == "seq_len" else "--" + dest.replace("_", "-")

    return re.sub(r"ConversionConfig\.(\w+)", flag, message)


def fit_settings(args: argparse.Namespace) -> FitSettings:
    if not (math.isfinite(args.lr_threshold) and args.lr_threshold > 0) or args.rounds < 1:
        raise PhasecodeError("--lr-threshold must be a finite number > 0 and --rounds >= 1")
    train = TrainConfig(
        lr_threshold=args.lr_threshold,
        rounds=args.rounds,
        mode=args.mode,
        batch_samples=args.batch_samples,
    )
    return FitSettings(
        args.method,
        args.timesteps,
        args.grains,
        train,
        args.code,
        args.objective,
        0.0 if args.probs_bias == "auto" else args.probs_bias,
        args.probs_bias == "auto",
    )


def add_sampling(parser: argparse.ArgumentParser, seq_len_option: str = "--seq-len") -> None:
    """Calibration sampling; ``compare`` names the length --calib-seq-len (its --seq-len is
    the evaluation window)."""
    parser.add_argument("--samples", type=int, default=10_000, help="training samples per site")
    parser.add_argument("--calibration", type=Path, help="calibration text (.jsonl or .txt)")
    parser.add_argument("--sequences", type=int, default=16, help="calibration sequences")
    parser.add_argument(
        seq_len_option, dest="calib_seq_len", type=int, default=256, help="calibration length"
    )
    parser.add_argument("--seed", type=int, default=0)


def check_calibration(args: argparse.Namespace) -> Path:
    """The --calibration file (default: the bundled C4 sample), checked to exist."""
    calibration = args.calibration or DEFAULT_CALIBRATION
    if not calibration.is_file():
        raise PhasecodeError(f"calibration file not found: {calibration}")
    return calibration


def sampling_settings(args: argparse.Namespace, prefix: bool = True) -> SamplingSettings:
    if args.samples < MIN_SAMPLES:
        raise PhasecodeError(f"--samples must be at least {MIN_SAMPLES}, got {args.samples}")
    if args.sequences < 1:
        raise PhasecodeError(f"--sequences must be >= 1, got {args.sequences}")
    if args.calib_seq_len < 2:
        raise PhasecodeError(f"calibration seq_len must be >= 2, got {args.calib_seq_len}")
    calibration = check_calibration(args)
    return SamplingSettings(
        samples=args.samples,
        calibration=calibration,
        sequences=args.sequences,
        seq_len=args.calib_seq_len,
        prefix_bos=prefix,
        rotate_down=not getattr(args, "no_rotate", False),
        seed=args.seed,
    )


def add_prefix(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-prefix", action="store_true", help="no prefix KV cache")
    group.add_argument("--prefix", metavar="TEXT", help="use this text as the prefix")
    group.add_argument(
        "--prefix-ids", metavar="IDS", help="use these token ids (comma list) as the prefix"
    )


def prefix_request(args: argparse.Namespace) -> PrefixRequest:
    """Chosen by measurement unless --no-prefix, --prefix TEXT or --prefix-ids says otherwise;
    the text's tokens and the ids' range are checked once the tokenizer is there."""
    if args.no_prefix:
        return NO_PREFIX
    if args.prefix is not None:
        if not args.prefix:
            raise PhasecodeError("--prefix needs a non-empty text")
        return PrefixRequest("text", text=args.prefix)
    if args.prefix_ids is not None:
        try:
            ids = tuple(int(i) for i in args.prefix_ids.split(",") if i.strip())
        except ValueError:
            raise PhasecodeError(
                f"--prefix-ids: not a comma list of ids: {args.prefix_ids!r}"
            ) from None
        if not ids or min(ids) < 0:
            raise PhasecodeError(f"--prefix-ids needs ids >= 0, got {args.prefix_ids!r}")
        return PrefixRequest("ids", ids=ids)
    return PrefixRequest()


def positive(args: argparse.Namespace, *names: str) -> None:
    """Each named integer option must be >= 1 (``None``: not given)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise PhasecodeError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
