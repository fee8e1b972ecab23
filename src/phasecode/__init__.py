"""phasecode: turn decoder-only LLMs into spiking LLMs with multi-granularity phase coding.

``import phasecode as pc`` gives the public API (``docs/api.md``): ``load_model``,
``ConversionConfig``, ``convert``, ``SpikingModelForCausalLM``, ``load``, ``perplexity``,
``zero_shot``, ``energy``, ``simulate``. They are imported on first use, so importing the
package (and the CLI's argument checks) does not pull in the model stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# the public API: imported from phasecode.api on first use
PUBLIC_NAMES = [
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
__all__ = PUBLIC_NAMES

if TYPE_CHECKING:
    from phasecode.api import (  # noqa: F401
        ConfigError,
        ConversionConfig,
        PhasecodeError,
        SpikingModelForCausalLM,
        convert,
        energy,
        load,
        load_model,
        perplexity,
        simulate,
        zero_shot,
    )


def __getattr__(name: str) -> Any:
    if name in PUBLIC_NAMES:
        return getattr(importlib.import_module("phasecode.api"), name)
    raise AttributeError(f"module 'phasecode' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
