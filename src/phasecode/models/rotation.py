"""Outlier removal by orthogonal rotation (QuaRot-style), applied to the ANN before coding.

Phase coding spends a few spike phases per channel, so a handful of massive outlier channels
would waste the code range of all others. Rotating the residual stream by an orthogonal R and
the ``down_proj`` input by H spreads every outlier over all channels without changing the
function the network computes:

1. ``fuse_norms`` folds each pre-norm's gain into the linears reading its output, so every
   such norm becomes a plain x / rms(x), which commutes with any orthogonal R (rms(x·R) =
   rms(x)).
2. ``rotate_residual`` rotates every weight that reads or writes the residual stream by R;
   a branch ending in a post-norm (Gemma 3, OLMo 2) is rotated online after that norm
   (``post_norm_rotation``), since a norm's gain on its output cannot be folded.
3. ``fold_down_rotation`` folds H into ``down_proj``; its input is rotated online, x ↦ x·H.
4. ``fold_value_rotation`` rotates V per head (QuaRot's R2) and undoes it in ``o_proj``;
   ``head_rotation`` is the matching online rotation of Q and K after RoPE (R3).

The matrices follow from the seed alone, so an artifact stores only the seed and re-applies them.

Memory stays bounded for 7-70B models on any device: no rotation is built as a dense n×n
matrix (``OnlineRotation`` applies it through its Kronecker factors), and each weight is
rewritten in blocks of rows or columns of at most ``CHUNK_BYTES`` in float64, on the weight's
own device, rounded once on the way back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from phasecode.errors import PhasecodeError
from phasecode.models.adapters import ATTENTION, MLP, Adapter, adapter_for, submodule
from phasecode.models.hadamard import OnlineRotation

# Bound of one float64 block while a weight is rewritten; the rotation's temporaries add a few
# more blocks of the same size (see benchmarks/rotation_memory.py for the measured peak).
CHUNK_BYTES = 64 * 2**20


def rotate_model(
    model: nn.Module, seed: int = 0, online_down: bool = True
) -> OnlineRotation | None:
    """Fuse norms and rotate the residual stream; with ``online_down`` also fold H into down_proj.

    Returns the down_proj rotation (None without ``online_down``): the model is only correct
    once x ↦ x·H is applied at every down_proj input (the spiking site wrappers do it).
    """
    fuse_norms(model)
    rotate_residual(model, seed)
    return fold_down_rotation(model, seed) if online_down else None


@torch.no_grad()
def fuse_norms(model: nn.Module) -> None:
    """Fold each pre-norm's gain γ into the columns of the linears reading it, then make the
    gain 1. Post-norms keep theirs: their output goes to the residual stream, not a linear."""
    adapter = adapter_for(model)
    untie_embeddings(model)
    for i in range(adapter.num_layers(model)):
        for branch in (ATTENTION, MLP):
            norm = adapter.pre_norm(branch)
            if norm is not None:
                readers = [adapter.layer_path(i, name) for name in adapter.readers(branch)]
                _fuse_norm(model, adapter, adapter.layer_path(i, norm), readers)
    _fuse_norm(model, adapter, adapter.final_norm, [adapter.lm_head])


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

    What writes to the stream now writes h·R (embedding E ← E·R; o/down_proj W ← Rᵀ·W,
    b ← b·R) and what reads it undoes R (q/k/v, gate/up, lm_head: W ← W·R). Needs fused
    pre-norms: only a gain-free RMSNorm commutes with R. A branch with a post-norm writes
    through it, and γ ⊙ y/rms(y) is no rotation of anything the linear can hold, so its
    writer stays as it is and the model needs y ↦ y·R online after the post-norm
    (``post_norm_rotation``; the surgery applies it).
    """
    adapter = adapter_for(model)
    untie_embeddings(model)
    _require_fused_norms(model, adapter)
    embedding = submodule(model, adapter.embed).weight
    rotation = OnlineRotation(embedding.shape[1], seed)
    readers = [*adapter.readers(ATTENTION), *adapter.readers(MLP)]
    writers = [adapter.writer(b) for b in (ATTENTION, MLP) if adapter.post_norm(b) is None]
    head = submodule(model, adapter.lm_head).weight
    for weight in [embedding, head, *(m.weight for m in adapter.linears(model, readers))]:
        _rewrite_rows(weight, rotation)
    for linear in adapter.linears(model, writers):
        _rewrite_columns(linear.weight, rotation)  # Rᵀ·W = (Wᵀ·R)ᵀ
        if linear.bias is not None:
            _rewrite_rows(linear.bias, rotation)


def post_norm_rotation(model: nn.Module, seed: int = 0) -> OnlineRotation | None:
    """The residual rotation R of ``rotate_residual``, to apply online after every post-norm
    (None for a block without post-norms, where every writer holds it)."""
    adapter = adapter_for(model)
    if not adapter.post_norms:
        return None
    return OnlineRotation(model.config.hidden_size, seed)


@torch.no_grad()
def fold_down_rotation(model: nn.Module, seed: int = 0) -> OnlineRotation:
    """Fold H = hadamard_rotation(intermediate_size, seed) into every down_proj (W ← W·H).

    Returns H as an ``OnlineRotation``: the model is only correct once each down_proj input is
    rotated online, x ↦ x·H (the spiking site wrapper does it). The rotated input is what the
    spiking neurons code: its outliers are spread over all channels.
    """
    adapter = adapter_for(model)
    downs = adapter.linears(model, [adapter.down])
    rotation = OnlineRotation(downs[0].in_features, seed)
    for down in downs:
        _rewrite_rows(down.weight, rotation)
    return rotation


def head_rotation(head_dim: int, seed: int = 0) -> OnlineRotation:
    """The per-head rotation H of order ``head_dim``, applied online to Q and K after RoPE.

    (Q·H)(K·H)ᵀ = Q·Kᵀ since H·Hᵀ = I, so attention is unchanged while the outlier channels of
    Q and K are spread over the head. It is the same H that ``fold_value_rotation`` folds into V
    (for a power-of-two head_dim the seed does not matter: H is Sylvester's).
    """
    return OnlineRotation(head_dim, seed)


@torch.no_grad()
def fold_value_rotation(model: nn.Module, seed: int = 0) -> None:
    """Rotate every value head by H = head_rotation(head_dim, seed) and undo it in o_proj.

    For KV head g with rows W_g of v_proj (head_dim × hidden): v_g·H = x·(Hᵀ·W_g)ᵀ + b_g·H, so
    W_g ← Hᵀ·W_g and b_g ← b_g·H. Attention mixes V over tokens only, so head h's output
    becomes o_h·H (also with GQA, where query head h reads KV head h // groups: every KV head
    has the same H). o_proj reads head h through its columns W_o[:, h]: (o_h·H)·(W_o[:, h]·H)ᵀ
    = o_h·W_o[:, h]ᵀ, so W_o[:, h] ← W_o[:, h]·H. The model needs no online rotation for this;
    it commutes with ``rotate_residual`` (that acts on the other side of both weights).
    """
    adapter = adapter_for(model)
    head_dim = adapter.head_dim(model.config)
    rotation = head_rotation(head_dim, seed)

    def per_head(x: Tensor) -> Tensor:
        return rotation(x.reshape(*x.shape[:-1], -1, head_dim)).reshape(x.shape)

    for i, layer in enumerate(adapter.decoder_layers(model)):
        value = adapter.attention_projections(model, layer)[2]
        output = adapter.part(layer, adapter.o)
        if value.out_features % head_dim or output.in_features % head_dim:
            raise PhasecodeError(
                f"layer {i}: v_proj out {value.out_features} / o_proj in {output.in_features} "
                f"are not whole heads of {head_dim}"
            )
        _rewrite_columns(value.weight, per_head)  # W_g ← Hᵀ·W_g = (W_gᵀ·H)ᵀ
        if value.bias is not None:
            _rewrite_rows(value.bias, per_head)  # b_g ← b_g·H
        _rewrite_rows(output.weight, per_head)  # W_o[:, h] ← W_o[:, h]·H


def _fuse_norm(model: nn.Module, adapter: Adapter, norm_path: str, readers: Sequence[str]) -> None:
    norm = submodule(model, norm_path)
    for path in readers:
        weight = submodule(model, path).weight
        gain = adapter.norm_gain(norm).detach().to(weight.device, _compute_dtype(weight.device))
        _rewrite_rows(weight, lambda w, g=gain: w * g)
    adapter.set_unit_gain(norm)


def _require_fused_norms(model: nn.Module, adapter: Adapter) -> None:
    pre_norms = [adapter.pre_norm(b) for b in (ATTENTION, MLP) if adapter.pre_norm(b)]
    paths = [adapter.final_norm] + [
        adapter.layer_path(i, name) for i in range(adapter.num_layers(model)) for name in pre_norms
    ]
    for path in paths:
        if not torch.all(adapter.norm_gain(submodule(model, path)) == 1):
            raise PhasecodeError(f"{path} has a gain; call fuse_norms before rotating the model")


def _compute_dtype(device: torch.device) -> torch.dtype:
    """float64 for the rewrite, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _block_size(elements_per_line: int) -> int:
    """Rows (or columns) per block so that one float64 block stays within CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (8 * elements_per_line))


@torch.no_grad()
def _rewrite_rows(param: Tensor, update: Callable[[Tensor], Tensor]) -> None:
    """param ← update(param) for a row-wise update (W·R, W·diag(g), b·R), block by block.

    Each block is computed in float64 on param's device and written back in place, rounding
    once. A 1-d param (a bias) is one row.
    """
    matrix = param.detach()
    matrix = matrix.unsqueeze(0) if matrix.dim() == 1 else matrix
    step = _block_size(matrix.shape[1])
    compute = _compute_dtype(matrix.device)
    for start in range(0, matrix.shape[0], step):
        block = matrix[start : start + step]
        block.copy_(update(block.to(compute)))


@torch.no_grad()
def _rewrite_columns(param: Tensor, update: Callable[[Tensor], Tensor]) -> None:
    """param ← update(paramᵀ)ᵀ, for left products Rᵀ·W = (Wᵀ·R)ᵀ, block of columns by block."""
    matrix = param.detach()
    step = _block_size(matrix.shape[0])
    compute = _compute_dtype(matrix.device)
    for start in range(0, matrix.shape[1], step):
        block = matrix[:, start : start + step]
        columns = block.T.to(compute, memory_format=torch.contiguous_format)
        block.copy_(update(columns).T)
