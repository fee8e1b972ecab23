"""Outlier removal by orthogonal rotation (QuaRot-style), applied to the ANN before coding.

Phase coding spends a few spike phases per channel, so a handful of massive outlier channels
would waste the code range of all others. Rotating the residual stream by an orthogonal R and
the ``down_proj`` input by H spreads every outlier over all channels without changing the
function the network computes:

1. ``fuse_norms`` folds each RMSNorm gain into the linears reading its output, so every norm
   becomes a plain x / rms(x), which commutes with any orthogonal R (rms(x·R) = rms(x)).
2. ``rotate_residual`` rotates every weight that reads or writes the residual stream by R.
3. ``fold_down_rotation`` folds H into ``down_proj``; its input is rotated online, x ↦ x·H.

The matrices follow from the seed alone, so an artifact stores only the seed and re-applies them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from phasecode.errors import PhasecodeError
from phasecode.models.adapters import Adapter, adapter_for, submodule
from phasecode.models.hadamard import hadamard_rotation


@dataclass(frozen=True)
class RotationState:
    """How a model was rotated: the seed regenerates R and H; ``down`` is H when folded."""

    seed: int
    hidden_size: int
    intermediate_size: int
    down: Tensor | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class HookGroup:
    """Forward hooks removed together, by ``remove()`` or on leaving a ``with`` block."""

    handles: tuple[RemovableHandle, ...]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def __enter__(self) -> HookGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def rotate_model(model: nn.Module, seed: int = 0, online_down: bool = True) -> RotationState:
    """Fuse norms and rotate the residual stream; with ``online_down`` also fold H into down_proj.

    With ``online_down`` the model is only correct once x ↦ x·H is applied at every down_proj
    input (``apply_online_down(model, state.down)`` or the spiking site wrappers).
    """
    fuse_norms(model)
    rotate_residual(model, seed)
    adapter = adapter_for(model)
    hidden = submodule(model, adapter.embed).weight.shape[1]
    intermediate = _layer_linears(model, adapter, [adapter.down])[0].in_features
    down = fold_down_rotation(model, seed) if online_down else None
    return RotationState(seed, hidden, intermediate, down)


@torch.no_grad()
def fuse_norms(model: nn.Module) -> None:
    """Fold each RMSNorm gain γ into the columns of the linears reading it, then set γ = 1."""
    adapter = adapter_for(model)
    untie_embeddings(model)
    for i in range(adapter.num_layers(model)):
        attention_readers = [
            adapter.layer_path(i, name) for name in (adapter.q, adapter.k, adapter.v)
        ]
        mlp_readers = [adapter.layer_path(i, name) for name in (adapter.gate, adapter.up)]
        _fuse_norm(model, adapter.layer_path(i, adapter.input_norm), attention_readers)
        _fuse_norm(model, adapter.layer_path(i, adapter.post_attention_norm), mlp_readers)
    _fuse_norm(model, adapter.final_norm, [adapter.lm_head])


@torch.no_grad()
def untie_embeddings(model: nn.Module) -> None:
    """Give lm_head its own weight, since fusion and rotation change it apart from the embedding.

    Also turns ``tie_word_embeddings`` off, so neither ``tie_weights`` nor a save/reload
    round trip ties the two again.
    """
    adapter = adapter_for(model)
    head = submodule(model, adapter.lm_head)
    embedding = submodule(model, adapter.embed).weight
    if head.weight is embedding or head.weight.data_ptr() == embedding.data_ptr():
        head.weight = nn.Parameter(head.weight.detach().clone(), head.weight.requires_grad)
    model.config.tie_word_embeddings = False
    if hasattr(model, "get_expanded_tied_weights_keys"):  # transformers' cached tying plan
        model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)


@torch.no_grad()
def rotate_residual(model: nn.Module, seed: int = 0) -> None:
    """Rotate the residual stream, h ↦ h·R, by R = hadamard_rotation(hidden_size, seed).

    What writes to the stream now writes h·R (embedding E ← E·R; o/down_proj W ← Rᵀ·W, b ← b·R)
    and what reads it undoes R (q/k/v, gate/up, lm_head: W ← W·R). Needs fused norms: only a
    gain-free RMSNorm commutes with R.
    """
    adapter = adapter_for(model)
    untie_embeddings(model)
    _require_fused_norms(model, adapter)
    embedding = submodule(model, adapter.embed).weight
    rotation = hadamard_rotation(embedding.shape[1], seed, torch.float64)
    readers = [adapter.q, adapter.k, adapter.v, adapter.gate, adapter.up]
    writers = [adapter.o, adapter.down]
    head = submodule(model, adapter.lm_head).weight
    for weight in [embedding, head, *(m.weight for m in _layer_linears(model, adapter, readers))]:
        _rewrite(weight, lambda w, r: w @ r, rotation)
    for linear in _layer_linears(model, adapter, writers):
        _rewrite(linear.weight, lambda w, r: r.T @ w, rotation)
        if linear.bias is not None:
            _rewrite(linear.bias, lambda b, r: b @ r, rotation)


@torch.no_grad()
def fold_down_rotation(model: nn.Module, seed: int = 0) -> Tensor:
    """Fold H = hadamard_rotation(intermediate_size, seed) into every down_proj (W ← W·H).

    Returns H (float64): the model is only correct once each down_proj input is rotated
    online, x ↦ x·H, which ``apply_online_down`` (or the spiking site wrapper) does. The
    rotated input is what the spiking neurons code: its outliers are spread over all channels.
    """
    adapter = adapter_for(model)
    downs = _layer_linears(model, adapter, [adapter.down])
    rotation = hadamard_rotation(downs[0].in_features, seed, torch.float64)
    for down in downs:
        _rewrite(down.weight, lambda w, r: w @ r, rotation)
    return rotation


def apply_online_down(model: nn.Module, rotation: Tensor) -> HookGroup:
    """Hook every down_proj to rotate its input, x ↦ x·H, so a folded model runs standalone."""
    adapter = adapter_for(model)
    handles = []
    for down in _layer_linears(model, adapter, [adapter.down]):
        local = rotation.to(down.weight.device, down.weight.dtype)
        handles.append(down.register_forward_pre_hook(partial(_rotate_input, local)))
    return HookGroup(tuple(handles))


def _rotate_input(rotation: Tensor, module: nn.Module, args: tuple) -> tuple:
    return (args[0] @ rotation, *args[1:])


def _fuse_norm(model: nn.Module, norm_path: str, reader_paths: Sequence[str]) -> None:
    norm = submodule(model, norm_path)
    gain = norm.weight.detach().to(torch.float64)
    for path in reader_paths:
        _rewrite(submodule(model, path).weight, lambda w, g: w * g, gain)
    norm.weight.fill_(1.0)


def _require_fused_norms(model: nn.Module, adapter: Adapter) -> None:
    paths = [adapter.final_norm] + [
        adapter.layer_path(i, name)
        for i in range(adapter.num_layers(model))
        for name in (adapter.input_norm, adapter.post_attention_norm)
    ]
    for path in paths:
        if not torch.all(submodule(model, path).weight == 1):
            raise PhasecodeError(f"{path} has a gain; call fuse_norms before rotating the model")


def _layer_linears(model: nn.Module, adapter: Adapter, names: Sequence[str]) -> list[nn.Linear]:
    return [
        submodule(model, adapter.layer_path(i, name))
        for i in range(adapter.num_layers(model))
        for name in names
    ]


def _rewrite(param: Tensor, update: Callable[[Tensor, Tensor], Tensor], other: Tensor) -> None:
    """Apply ``update`` in float64, rounding once (on the cast back), and write it in place."""
    value = param.detach().to(torch.float64)
    param.copy_(update(value, other.to(param.device)))
