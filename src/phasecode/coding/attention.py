"""Coded attention: the softmax probabilities replaced by their neuron's value SN(p), computed a
block of query rows at a time instead of as one eager S×L float32 softmax.

Each row's softmax depends only on that row's scores and the neuron is element-wise, so a block
of rows gives the same p and SN(p) as the whole matrix. A block also leaves out the keys none of
its rows may see (the causal mask's upper triangle): their p is exactly 0, and so is SN(0) =
sign(0)·SN(|0|) (the sign rule), so only terms 0·V go. Memory is bounded by one block's scores
(``BLOCK_ELEMENTS``) at any context length; compiled (``cache.kernels``), a block's scale,
mask, softmax and neuron are one fused loop between two GEMMs (C++ on CPU, Triton on CUDA), and
grouped-query heads read their key head without copying it.

Exactness against the eager reference (``conversion.surgery.reference_attention``): the same
operations in the same dtypes and order, but BLAS and the compiler may sum in another order
(Q·Kᵀ and P·V over fewer keys, the softmax's row sum), so p agrees within float32 rounding (in
bf16/fp16 models the compiler may also skip a rounding of p to the model's dtype). A p within
that rounding of one of the neuron's thresholds can then fire differently: the coded values
agree exactly except at such ties. Float64 models, kept for exact checks, use the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from phasecode.cache import kernels
from phasecode.cache.kernels import mark_dynamic
from phasecode.coding.neuron import code_inside

# Scores per block of query rows: 4 MiB in float32 stays below glibc's 32 MiB mmap threshold
# (a larger temporary is a fresh mmap that page-faults on first touch) and near the cache. On a
# 2-core CPU, SmolLM2's 512×513 attention took ~175 ms per layer in ~56-row blocks against
# ~275-340 ms as one block and ~270 ms for the eager reference (SDPA without neurons: ~85-110).
BLOCK_ELEMENTS = 2**20


def coded_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    scaling: float,
    neuron: tuple,
    compiled: bool = True,
) -> Tensor:
    """SN(softmax(Q·Kᵀ·scaling + mask))·V as [B, S, Hq, D], like transformers' attention.

    ``query`` [B, Hq, S, D]; ``key``/``value`` [B, Hk, L, D], already coded, Hq = g·Hk (query
    head h reads key head h // g); ``mask`` additive [B or 1, 1, S, ≥ L] or None; ``neuron``:
    the probabilities' site as ``coding.neuron.fused_arguments``. ``compiled=False`` (or
    PHASECODE_COMPILE=0) runs eagerly.
    """
    batch, heads, rows, dim = query.shape
    length = key.shape[-2]
    if mask is not None:
        mask = mask[..., :length]
    block = max(1, BLOCK_ELEMENTS // (batch * heads * length))
    ends = _key_ends(mask, rows, block, length)
    attend = kernels.compiled(_attend_block, dynamic=None) if compiled else _attend_block
    out = query.new_empty(batch, rows, heads, dim)
    for i, start in enumerate(range(0, rows, block)):
        stop, keys = min(rows, start + block), ends[i]
        part = None if mask is None else mask[:, :, start:stop, :keys]
        out[:, start:stop] = attend(
            mark_dynamic(query[:, :, start:stop], 0, 2),  # batch, rows, keys: any size
            mark_dynamic(key[:, :, :keys], 0, 2),
            mark_dynamic(value[:, :, :keys], 0, 2),
            # contiguous: a view's row stride is the full key count, which the last block's
            # keys would match and others not (one more graph)
            None if part is None else mark_dynamic(part.contiguous(), 0, 2, 3),
            scaling,
            *neuron,
        ).transpose(1, 2)
    return out


@torch.no_grad()
def coded_heads(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    rotation: tuple[Callable[[Tensor, Tensor], Tensor], Tensor] | None,
    neurons: tuple[tuple | None, tuple | None, tuple | None],
    compiled: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Q and K rotated per head (``rotation`` as ``OnlineRotation.traceable``: (QH)(KH)ᵀ =
    QKᵀ), then Q, K and V coded by their
    neurons (``neurons``: the q, k and v sites as ``fused_arguments``, None passes): one
    compiled call instead of three, the same operations as the site-by-site path, so the
    results are bit-identical to it. ``query`` [B, Hq, S, D], ``key``/``value`` [B, Hk, L, D].
    """
    run = kernels.compiled(_code_heads, dynamic=None) if compiled else _code_heads
    dynamic = [mark_dynamic(t, 0, 2) for t in (query, key, value)]  # batch, rows, keys
    return run(*dynamic, rotation, *neurons)


def _code_heads(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    rotation: tuple[Callable[[Tensor, Tensor], Tensor], Tensor] | None,
    *neurons: tuple | None,
) -> tuple[Tensor, Tensor, Tensor]:
    if rotation is not None:
        rotate, dense = rotation
        query, key = rotate(query, dense), rotate(key, dense)
    q, k, v = neurons
    return code_inside(query, q), code_inside(key, k), code_inside(value, v)


def _key_ends(mask: Tensor | None, rows: int, block: int, length: int) -> list[int]:
    """Per block of query rows: one past the last key any of its rows may see (in any batch
    row); all keys for a block with a row that may see none (its softmax is uniform over
    every key). A key counts as hidden only under the mask's minimum value or −inf."""
    starts = range(0, rows, block)
    if mask is None:
        return [length] * len(starts)
    seen = (mask > torch.finfo(mask.dtype).min).flatten(0, 1).any(0)  # [S, L]
    ends = (length - seen.flip(-1).int().argmax(-1)).tolist()  # a row seeing none: length
    return [max(ends[start : start + block]) for start in starts]


def _attend_block(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scaling: float, *neuron
) -> Tensor:
    """One block of query rows: [B, Hq, R, D] → [B, Hq, R, D], every operation as in the
    reference (Q·Kᵀ then the scale, the mask, a float32 softmax cast to the model's dtype, the
    neuron in its firing dtype, P·V); the query heads of one key head form one GEMM."""
    batch, kv_heads, length, dim = key.shape
    heads, rows = query.shape[1], query.shape[2]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads * rows, dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)) * scaling
    if mask is not None:
        scores = scores.view(batch, kv_heads, -1, rows, length) + mask.unsqueeze(1)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    coded = code_inside(probs, neuron)
    out = torch.matmul(coded.view(batch, kv_heads, -1, length), value)
    return out.view(batch, heads, rows, dim)
