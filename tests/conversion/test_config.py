"""ConversionConfig: validated on construction (a ValueError naming the field), round trips
through dict / JSON / YAML / recipe files, and maps to the settings the stages take."""

from __future__ import annotations

import pytest

from phasecode.conversion.config import ConfigError, ConversionConfig
from phasecode.inference.prefix_choice import AUTO, NO_PREFIX
from phasecode.settings import FitSettings


def test_defaults_are_the_clis():
    config = ConversionConfig()
    assert config.fit_settings() == FitSettings()
    assert config.prefix_request() == AUTO
    assert config.energy_budget_settings() is None


@pytest.mark.parametrize("method, code", [("mgpc", "signed-digit"), ("las", "binary")])
def test_the_default_code_is_the_methods_own_and_recorded_resolved(method, code):
    config = ConversionConfig(method=method)
    assert config.code == code == FitSettings(method).code
    assert config.to_dict()["code"] == code
    assert ConversionConfig.from_dict(config.to_dict()) == config
    assert ConversionConfig(method=method, code="binary").code == "binary"


def test_the_default_range_is_chosen_and_reaches_the_fit():
    assert ConversionConfig().neuron_range == "auto" == FitSettings().neuron_range
    fitted = ConversionConfig(neuron_range="fitted")
    assert fitted.fit_settings().neuron_range == "fitted"
    assert ConversionConfig.from_dict(fitted.to_dict()) == fitted


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"timesteps": 0}, "timesteps"),
        ({"timesteps": 40}, "timesteps"),
        ({"grains": 9}, "grains"),
        ({"method": "nope"}, "method"),
        ({"code": "signed-digit", "method": "las"}, "mgpc"),
        ({"samples": 3}, "samples"),
        ({"probs_bias": -1.0}, "probs_bias"),
        ({"probs_bias": "sometimes"}, "probs_bias"),
        ({"lr_threshold": float("nan")}, "lr_threshold"),
        ({"weight_bits": 3}, "weight_bits"),
        ({"energy_budget": 0.0}, "energy_budget"),
        ({"energy_budget": 0.8, "min_timesteps": 9}, "min_timesteps"),
        ({"prefix": ""}, "prefix"),
        ({"prefix": [1, -2]}, "prefix"),
        ({"rotate": "yes"}, "rotate"),
        ({"batch_samples": 0}, "batch_samples"),
        ({"neuron_range": "wide"}, "neuron_range"),
    ],
)
def test_bad_values_raise_a_value_error_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field) as caught:
        ConversionConfig(**changes)
    assert isinstance(caught.value, ConfigError)


def test_round_trips(tmp_path):
    config = ConversionConfig(
        timesteps=6, prefix=[0, 5], probs_bias="auto", energy_budget=0.8, batch_samples=None
    )
    assert config.prefix == (0, 5)
    assert ConversionConfig.from_dict(config.to_dict()) == config
    assert ConversionConfig.from_json(config.to_json()) == config
    assert ConversionConfig.from_yaml(config.to_yaml()) == config
    for name in ("recipe.yaml", "recipe.json"):
        assert ConversionConfig.load(config.save(tmp_path / name)) == config
    assert ConversionConfig(prefix=None).prefix_request() == NO_PREFIX
    assert ConversionConfig(prefix="\n").prefix_request().text == "\n"
    assert config.replace(timesteps=8).timesteps == 8


def test_bad_recipes(tmp_path):
    (tmp_path / "typo.yaml").write_text("timestep: 8\n")
    with pytest.raises(ConfigError, match="unknown ConversionConfig field"):
        ConversionConfig.load(tmp_path / "typo.yaml")
    (tmp_path / "broken.yaml").write_text("timesteps: [8\n")
    with pytest.raises(ConfigError, match="not a YAML"):
        ConversionConfig.load(tmp_path / "broken.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="mapping"):
        ConversionConfig.load(tmp_path / "list.json")
    with pytest.raises(ConfigError, match="not found"):
        ConversionConfig.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"\.yaml"):
        ConversionConfig.load(tmp_path / "recipe.txt")
