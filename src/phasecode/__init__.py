"""phasecode: turn LLaMA-family LLMs into spiking LLMs with multi-granularity phase coding."""

__version__ = "0.1.0"
