"""The public Python API, re-exported by ``phasecode`` (``import phasecode as pc``; its
``PUBLIC_NAMES`` are the contract); the CLI's jobs are built on it. ``docs/api.md``."""

from phasecode import PUBLIC_NAMES
from phasecode.api.measure import energy as energy
from phasecode.api.measure import perplexity as perplexity
from phasecode.api.measure import simulate as simulate
from phasecode.api.measure import zero_shot as zero_shot
from phasecode.api.model import convert as convert
from phasecode.api.model import load_model as load_model
from phasecode.conversion.causal_lm import SpikingModelForCausalLM as SpikingModelForCausalLM
from phasecode.conversion.config import ConfigError as ConfigError
from phasecode.conversion.config import ConversionConfig as ConversionConfig
from phasecode.errors import PhasecodeError as PhasecodeError

load = SpikingModelForCausalLM.from_pretrained  # pc.load(dir, device=, dtype=, ...)

__all__ = PUBLIC_NAMES
