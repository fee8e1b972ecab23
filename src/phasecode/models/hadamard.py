"""Orthogonal Hadamard-based rotations for any width, in plain PyTorch.

A Hadamard matrix of order n spreads one large coordinate evenly over all n, which is what
removes the massive outliers at the ``down_proj`` input (QuaRot-style online rotation). Sylvester
Hadamards exist only for n = 2^k; widths like 1536 = 2^9·3 or 4864 = 2^8·19 are handled as
H_{2^k} ⊗ Q_m with a seeded random orthogonal Q_m for the odd factor m. The result is exactly
orthogonal (up to float rounding), so W·x = (W·R)·(Rᵀ·x) leaves the ANN unchanged.

``OnlineRotation`` applies x ↦ x·H through the two small factors and never builds the dense
n×n matrix (14336² float64 would be 1.6 GB), so it also serves to fold H into large weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# From this power-of-two order on, the whole Sylvester factor runs as a fast Walsh-Hadamard
# transform (k = log2 p butterfly passes) instead of a p×p GEMM. Measured on a shared 2-core CPU
# (benchmarks/rotation_memory.json, "fwht_vs_gemm"): about even at p = 512-1024, the transform
# 1.9-2.2x faster at p = 2048, 2.4-4.2x at 4096 and 6-11x at 8192 (float64 / float32).
FWHT_MIN_ORDER = 2048
# Below it, the Sylvester factor is split H_p = H_a ⊗ H_b: H_b ⊗ Q_m (at most this wide) is one
# small dense GEMM, H_a runs as butterflies. For SmolLM2's 1536 = 512·3 (b = 16, a block of 48)
# this took the online down_proj rotation from ~1.5-2.5x to ~0.8x the down_proj's own time
# (benchmarks/speed.py profile, single-threaded CPU); a head_dim ≤ 64 stays one dense GEMM.
DENSE_WIDTH = 64


def sylvester(order: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The normalised Sylvester Hadamard matrix of a power-of-two order."""
    if order < 1 or order & (order - 1):
        raise ValueError(f"Sylvester Hadamard needs a power of two, got {order}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < order:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / order**0.5


def random_orthogonal(order: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A seeded Haar-random orthogonal matrix (QR of a Gaussian matrix, signs fixed).

    Always drawn on the CPU in float64, so a seed gives the same matrix on every device.
    """
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(order, order, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))[None, :]).contiguous().to(dtype)


def hadamard_rotation(width: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """The dense orthogonal [width, width] matrix H_{2^k} ⊗ Q_m with width = 2^k·m, m odd.

    Only for small widths and reference checks; large weights go through ``OnlineRotation``.
    """
    power = width & -width  # largest power of two dividing width
    odd = width // power
    rotation = sylvester(power)
    if odd > 1:
        rotation = torch.kron(rotation, random_orthogonal(odd, seed))
    return rotation.to(dtype)


def fwht(x: Tensor, block: int = 1) -> Tensor:
    """x ↦ x·(H_p ⊗ I_block) (normalised Sylvester) along the last dim of p·block entries, in
    k = log2 p butterfly passes; ``block`` = 1 is the plain transform x·H_p.

    Each pass applies H_2 = [[1, 1], [1, -1]] on one bit of the index, and H_p = H_2^{⊗k}, so
    the result is in the natural (Sylvester) order. Two buffers are used in turn, so a pass
    allocates nothing. The 1/√p scale is applied up front: partial sums then stay within
    √p·max|x|, which keeps float16 from overflowing.
    """
    p = x.shape[-1] // block
    if p < 1 or p & (p - 1) or p * block != x.shape[-1]:
        raise ValueError(f"fast Walsh-Hadamard transform needs a power of two, got {p}")
    if torch.is_grad_enabled() and x.requires_grad:  # out= buffers cannot carry gradients
        return _differentiable_butterflies(x * p**-0.5, p, block)
    flat = x.reshape(-1, p * block)  # may be a strided view: the buffers are made contiguous
    src = torch.empty(flat.shape, dtype=x.dtype, device=x.device)
    torch.mul(flat, p**-0.5, out=src)
    return _butterflies(src, p, block).view(x.shape)


def _differentiable_butterflies(x: Tensor, p: int, block: int) -> Tensor:
    """``_butterflies`` out of place, for a backward pass (the loss sensitivity)."""
    shape, half = x.shape, p // 2
    while half >= 1:
        pairs = x.reshape(-1, 2, half * block)
        x = torch.stack((pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]), 1)
        half //= 2
    return x.reshape(shape)


def _butterflies(src: Tensor, p: int, block: int) -> Tensor:
    """The unscaled passes of ``fwht`` on a contiguous [N, p·block] buffer (overwritten)."""
    if torch.is_grad_enabled() and src.requires_grad:
        return _differentiable_butterflies(src, p, block)
    dst = torch.empty_like(src)
    half = p // 2
    while half >= 1:
        pairs, out = src.view(-1, 2, half * block), dst.view(-1, 2, half * block)
        torch.add(pairs[:, 0], pairs[:, 1], out=out[:, 0])
        torch.sub(pairs[:, 0], pairs[:, 1], out=out[:, 1])
        src, dst = dst, src
        half //= 2
    return src


class OnlineRotation:
    """x ↦ x·H for H = H_{2^k} ⊗ Q_m, applied through its Kronecker factors.

    With H_{2^k} = H_a ⊗ H_b, x·H = x·(I_a ⊗ D)·(H_a ⊗ I_{b·m}) for the dense block
    D = H_b ⊗ Q_m: one GEMM with the small D on x seen as rows of b·m entries (no transpose,
    b·m MACs per element instead of 2^k + m), then log2 a butterfly passes over contiguous
    halves. b is the largest power of two with b·m ≤ ``DENSE_WIDTH``; from ``FWHT_MIN_ORDER``
    on (or as ``fast`` says) b = 1, and ``fast=False`` keeps the hybrid. Results equal x·H up
    to float rounding (summation order), never bit for bit across these choices.

    ``power`` and ``odd`` are the float64 CPU masters; the dense block is converted once per
    (device, dtype) and cached, so a call on a GPU tensor transfers nothing.
    """

    def __init__(self, width: int, seed: int = 0, fast: bool | None = None):
        if width < 1:
            raise ValueError(f"rotation width must be positive, got {width}")
        self.width, self.seed = width, seed
        self.power = sylvester(width & -width)
        self.odd = random_orthogonal(width // self.power.shape[0], seed)
        self.fast = self.power.shape[0] >= FWHT_MIN_ORDER if fast is None else fast
        p, m = self.power.shape[0], self.odd.shape[0]
        self.dense_order = 1 if self.fast else min(p, _floor_power_of_two(DENSE_WIDTH // m))
        self._factors: dict[tuple[torch.device, torch.dtype], tuple[Tensor]] = {}

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The dense H (for small widths and tests)."""
        return torch.kron(self.power, self.odd).to(dtype)

    def factors(self, device: torch.device | str, dtype: torch.dtype) -> tuple[Tensor]:
        """(D·a^-½,): the dense block with the butterflies' scale folded in, on ``device`` in
        ``dtype``, converted once. Without an odd factor (m = 1) Q_1 is 1, as in
        ``hadamard_rotation``."""
        key = (torch.device(device), dtype)
        if key not in self._factors:
            butterflies = self.power.shape[0] // self.dense_order
            odd = self.odd if self.odd.shape[0] > 1 else torch.ones(1, 1, dtype=torch.float64)
            dense = torch.kron(sylvester(self.dense_order), odd) * butterflies**-0.5
            self._factors[key] = (dense.to(key[0], dtype),)
        return self._factors[key]

    def __call__(self, x: Tensor) -> Tensor:
        """x·H along the last dim, on x's device and in x's dtype."""
        if x.shape[-1] != self.width:
            raise ValueError(f"rotation of width {self.width} got last dim {x.shape[-1]}")
        return _rotate(x, *self.factors(x.device, x.dtype), _butterflies)

    def traceable(self, device: torch.device, dtype: torch.dtype) -> Traceable:
        """(``rotate_with``, its dense block): this rotation as a compiled region can call
        it, out of place, with the same arithmetic as a call."""
        return rotate_with, self.factors(device, dtype)[0]


Traceable = tuple[Callable[[Tensor, Tensor], Tensor], Tensor]  # (rotate, its dense block)


def rotate_with(x: Tensor, dense: Tensor) -> Tensor:
    """``OnlineRotation`` of width x.shape[-1] from its dense block (``factors``), out of place:
    the same arithmetic as the rotation's call, written for a compiled region."""
    return _rotate(x, dense, _differentiable_butterflies)


def _rotate(x: Tensor, dense: Tensor, butterflies: Callable[[Tensor, int, int], Tensor]) -> Tensor:
    width, block = x.shape[-1], dense.shape[0]
    rows = x.reshape(-1, block)  # a copy only for a strided x (one column of a weight)
    rows = rows @ dense if block > 1 else rows * dense[0, 0]
    return butterflies(rows.view(-1, width), width // block, block).view(x.shape)


def _floor_power_of_two(n: int) -> int:
    """The largest power of two ≤ n (1 for n < 2)."""
    return 1 << max(n, 1).bit_length() - 1
