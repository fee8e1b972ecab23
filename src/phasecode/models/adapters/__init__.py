"""Architecture adapters, one module per ``config.model_type``; see ``base.Adapter``."""

from __future__ import annotations

from torch import nn

from phasecode.errors import PhasecodeError
from phasecode.models.adapters import gemma3, llama, mistral, olmo2, phi3, qwen2, qwen3
from phasecode.models.adapters.base import ATTENTION, MLP, Adapter, Projection, submodule

ADAPTERS: dict[str, Adapter] = {
    m.ADAPTER.model_type: m.ADAPTER for m in (llama, mistral, qwen2, qwen3, gemma3, phi3, olmo2)
}


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for a model's ``config.model_type``, or a clear error listing the supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        supported = ", ".join(sorted(ADAPTERS))
        raise PhasecodeError(f"unsupported model type {model_type!r}; supported: {supported}")
    return ADAPTERS[model_type]


__all__ = ["ADAPTERS", "ATTENTION", "MLP", "Adapter", "Projection", "adapter_for", "submodule"]
