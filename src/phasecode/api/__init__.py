"""The public Python API, re-exported by ``phasecode`` (``import phasecode as pc``); the CLI's
jobs are built on it. ``docs/api.md`` documents it."""

from phasecode.api.measure import energy, perplexity, simulate, zero_shot
from phasecode.api.model import convert, load, load_model
from phasecode.conversion.causal_lm import SpikingModelForCausalLM
from phasecode.conversion.config import ConfigError, ConversionConfig
from phasecode.errors import PhasecodeError

__all__ = [
    "ConfigError",
    "ConversionConfig",
    "PhasecodeError",
    "SpikingModelForCausalLM",
    "convert",
    "energy",
    "load",
    "load_model",
    "perplexity",
    "simulate",
    "zero_shot",
]
