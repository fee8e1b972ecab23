"""``ConversionConfig``: every option of a conversion as one frozen, validated value object.

The Python API (``phasecode.convert``) and the CLI (``phasecode convert``, also from a recipe
file with ``--config``) both build one; the artifact records it. Its defaults are the CLI's.
It round-trips through a plain dict, JSON and YAML, so a recipe written by hand, saved by
``to_yaml`` or read back from an artifact gives the same conversion.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from phasecode.errors import PhasecodeError
from phasecode.inference.prefix_choice import AUTO, NO_PREFIX, PrefixRequest
from phasecode.models.quantize import WEIGHT_BITS
from phasecode.settings import (
    BUDGET_MODES,
    BUDGET_SENSITIVITIES,
    CODES,
    METHODS,
    MODES,
    NEURON_RANGES,
    OBJECTIVES,
    RECONSTRUCTIONS,
    EnergyBudget,
    FitSettings,
    SamplingSettings,
    TrainConfig,
    default_code,
)

MIN_SAMPLES = 16  # per site: fewer cannot split into a training and a held-out half
AUTO_PREFIX = "auto"
AUTO_PROBS_BIAS = "auto"
RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


class ConfigError(PhasecodeError, ValueError):
    """A bad conversion setting: a ``ValueError`` for Python callers, one line on the CLI."""


@dataclass(frozen=True)
class ConversionConfig:
    """What a conversion is asked to do; defaults are ``phasecode convert``'s.

    ``prefix``: ``"auto"`` (chosen by measurement on the model), ``None`` (no prefix), any
    other text (its tokens), or a sequence of token ids. ``probs_bias``: a number >= 0 or
    ``"auto"``. ``batch_samples``: a count, or ``None`` for every sample. ``energy_budget``:
    the predicted SNN/ANN total-energy ratio to convert under (``None``: no budget).
    ``reconstruct``: ``"block"`` tunes each decoder layer's neurons on the layer's output
    after Alg. 1/2, ``"output"`` every neuron together on the model's next-token
    distribution (``conversion/reconstruct.py``; under an energy budget, price mode only,
    the tuned neurons then spend no more spike energy than the budget leaves); ``"none"``
    keeps the per-site fit.
    ``neuron_range``: ``"peak"`` widens every trained neuron until it reaches the largest
    value its site showed in calibration, ``"fitted"`` keeps the squared-error fit's range,
    ``"halfway"`` widens by the square root of the shortfall, ``"auto"`` keeps whichever
    codes the model best on calibration windows (``settings.RANGE_STRENGTHS``). ``code``:
    ``None`` is the method's own (``settings.default_code``: signed-digit for mgpc, binary
    for the fixed-code baselines); the config always holds the resolved name.
    """

    method: str = "mgpc"
    timesteps: int = 8
    grains: int = 2
    code: str | None = None
    objective: str = "mse"
    probs_bias: float | str = 0.0
    mode: str = TrainConfig.mode
    lr_threshold: float = TrainConfig.lr_threshold
    rounds: int = TrainConfig.rounds
    batch_samples: int | None = TrainConfig.batch_samples
    weight_bits: int | None = None
    samples: int = SamplingSettings.samples
    sequences: int = SamplingSettings.sequences
    seq_len: int = SamplingSettings.seq_len
    seed: int = SamplingSettings.seed
    rotate: bool = True
    prefix: str | tuple[int, ...] | None = AUTO_PREFIX
    lm_head: bool = True
    balance: bool = False
    energy_budget: float | None = None
    budget_mode: str = EnergyBudget.mode
    budget_sensitivity: str | None = EnergyBudget.sensitivity
    min_timesteps: int = EnergyBudget.min_timesteps
    costs: str = EnergyBudget.costs
    reconstruct: str = RECONSTRUCTIONS[0]
    neuron_range: str = NEURON_RANGES[0]

    def __post_init__(self) -> None:
        if isinstance(self.prefix, Sequence) and not isinstance(self.prefix, str):
            object.__setattr__(self, "prefix", tuple(self.prefix))  # lists from JSON / YAML
        if self.code is None:
            object.__setattr__(self, "code", default_code(self.method))
        self._check_fields()
        try:  # what the settings check across fields (e.g. grains <= T, code needs mgpc)
            self.fit_settings()
            self.energy_budget_settings()
        except ConfigError:
            raise
        except PhasecodeError as err:
            raise ConfigError(f"ConversionConfig: {err}") from None

    def _check_fields(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("code", self.code, CODES)
        _choice("objective", self.objective, OBJECTIVES)
        _choice("mode", self.mode, MODES)
        _choice("budget_mode", self.budget_mode, BUDGET_MODES)
        if self.budget_sensitivity is not None:
            _choice("budget_sensitivity", self.budget_sensitivity, BUDGET_SENSITIVITIES)
        _choice("reconstruct", self.reconstruct, RECONSTRUCTIONS)
        _choice("neuron_range", self.neuron_range, NEURON_RANGES)
        if self.reconstruct != "none" and self.method != "mgpc":
            raise ConfigError("ConversionConfig.reconstruct tunes trained neurons: needs mgpc")
        budgeted = self.energy_budget is not None
        if self.reconstruct != "none" and budgeted and self.budget_mode != "price":
            raise ConfigError(
                "ConversionConfig.reconstruct under an energy budget needs budget_mode 'price' "
                "(the knapsack gives sites different T, which the tuning cannot take)"
            )
        for name in ("timesteps", "grains", "rounds", "sequences", "min_timesteps"):
            _integer(name, getattr(self, name), 1)
        _integer("samples", self.samples, MIN_SAMPLES)
        _integer("seq_len", self.seq_len, 2)
        _integer("seed", self.seed, 0)
        if self.batch_samples is not None:
            _integer("batch_samples", self.batch_samples, 1)
        if self.weight_bits is not None and self.weight_bits not in WEIGHT_BITS:
            raise ConfigError(
                f"ConversionConfig.weight_bits must be one of {WEIGHT_BITS} or None, "
                f"got {self.weight_bits!r}"
            )
        _positive_number("lr_threshold", self.lr_threshold)
        if self.probs_bias != AUTO_PROBS_BIAS:
            _positive_number("probs_bias", self.probs_bias, allow_zero=True)
        if self.energy_budget is not None:
            _positive_number("energy_budget", self.energy_budget, what="an energy budget")
            if self.min_timesteps > self.timesteps:
                raise ConfigError(
                    f"ConversionConfig.min_timesteps must be in 1..T={self.timesteps}, "
                    f"got {self.min_timesteps}"
                )
        for name in ("rotate", "lm_head", "balance"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ConversionConfig.{name} must be true or false")
        if not isinstance(self.costs, str) or not self.costs:
            raise ConfigError("ConversionConfig.costs must be a preset name or a JSON file path")
        self._check_prefix()

    def _check_prefix(self) -> None:
        prefix = self.prefix
        if prefix is None or prefix == AUTO_PREFIX:
            return
        if isinstance(prefix, str):
            if not prefix:
                raise ConfigError("ConversionConfig.prefix: an empty text (use None for none)")
            return
        if not prefix or not all(_is_int(i) and i >= 0 for i in prefix):
            raise ConfigError(
                "ConversionConfig.prefix must be 'auto', None, a text or token ids >= 0, "
                f"got {list(prefix)!r}"
            )

    # -- what the conversion's stages take -----------------------------------------------

    def fit_settings(self) -> FitSettings:
        train = TrainConfig(
            lr_threshold=float(self.lr_threshold),
            rounds=self.rounds,
            mode=self.mode,
            batch_samples=self.batch_samples,
        )
        auto = self.probs_bias == AUTO_PROBS_BIAS
        return FitSettings(
            self.method,
            self.timesteps,
            self.grains,
            train,
            self.code,
            self.objective,
            0.0 if auto else float(self.probs_bias),
            auto,
            self.neuron_range,
        )

    def sampling_settings(self, calibration: Path | None = None) -> SamplingSettings:
        """Sampling from ``calibration`` (a file; None: the bundled C4 sample)."""
        extra = {} if calibration is None else {"calibration": Path(calibration)}
        return SamplingSettings(
            samples=self.samples,
            sequences=self.sequences,
            seq_len=self.seq_len,
            seed=self.seed,
            rotate_down=self.rotate,
            **extra,
        )

    def prefix_request(self) -> PrefixRequest:
        if self.prefix == AUTO_PREFIX:
            return AUTO
        if self.prefix is None:
            return NO_PREFIX
        if isinstance(self.prefix, str):
            return PrefixRequest("text", text=self.prefix)
        return PrefixRequest("ids", ids=tuple(self.prefix))

    def energy_budget_settings(self) -> EnergyBudget | None:
        if self.energy_budget is None:
            return None
        if self.method != "mgpc":
            raise ConfigError(
                "ConversionConfig.energy_budget trains its neurons: it needs method mgpc"
            )
        return EnergyBudget(
            float(self.energy_budget),
            self.min_timesteps,
            costs=self.costs,
            mode=self.budget_mode,
            sensitivity=self.budget_sensitivity,
        )

    def preparation(self) -> dict[str, Any]:
        """``conversion.convert.calibrate``'s options."""
        return {
            "rotate": self.rotate,
            "prefix": self.prefix_request(),
            "lm_head": self.lm_head,
            "balance": self.balance,
            "weight_bits": self.weight_bits,
        }

    # -- round trips ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if isinstance(self.prefix, tuple):
            data["prefix"] = list(self.prefix)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConversionConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a conversion config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown ConversionConfig field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**dict(data))
        except TypeError as err:  # a value that cannot be compared, e.g. a nested mapping
            raise ConfigError(f"ConversionConfig: {err}") from None

    def replace(self, **changes: Any) -> ConversionConfig:
        """A copy with ``changes`` (validated like any config)."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ConversionConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"not a JSON conversion config: {err}") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> ConversionConfig:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"not a YAML conversion config: {first}") from None
        return cls.from_dict(data or {})

    def save(self, path: str | Path) -> Path:
        """Write the config as YAML or JSON (by the file's suffix)."""
        from phasecode.artifacts import write_text_atomic

        path = Path(path)
        suffix = _recipe_suffix(path)
        write_text_atomic(path, self.to_json() if suffix == ".json" else self.to_yaml())
        return path

    @classmethod
    def load(cls, path: str | Path) -> ConversionConfig:
        """Read a recipe file (.yaml, .yml or .json)."""
        path = Path(path)
        suffix = _recipe_suffix(path)
        if not path.is_file():
            raise ConfigError(f"conversion config not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read conversion config {path}: {err}") from None
        try:
            return cls.from_json(text) if suffix == ".json" else cls.from_yaml(text)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None


def _recipe_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in RECIPE_SUFFIXES:
        raise ConfigError(
            f"a conversion config is a {', '.join(RECIPE_SUFFIXES)} file, got {path.name}"
        )
    return suffix


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(name: str, value: Any, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"ConversionConfig.{name} must be an integer >= {minimum}, got {value!r}")


def _positive_number(name: str, value: Any, allow_zero: bool = False, what: str = "") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(
            f"ConversionConfig.{name} ({what or 'a number'}) must be a finite number {bound}, "
            f"got {value!r}"
        )


def _choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(
            f"ConversionConfig.{name} must be one of {', '.join(choices)}, got {value!r}"
        )
