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

import torch
from torch import Tensor

# From this power-of-two order on, the Sylvester factor runs as a fast Walsh-Hadamard transform
# (k = log2 p butterfly passes) instead of a p×p GEMM. Measured on a shared 2-core CPU
# (benchmarks/rotation_memory.json, "fwht_vs_gemm"): about even at p = 512-1024, the transform
# 1.9-2.2x faster at p = 2048, 2.4-4.2x at 4096 and 6-11x at 8192 (float64 / float32).
FWHT_MIN_ORDER = 2048


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


def fwht(x: Tensor) -> Tensor:
    """x ↦ x·H_p (normalised Sylvester) along the last dim, in k = log2 p butterfly passes.

    Each pass applies H_2 = [[1, 1], [1, -1]] on one bit of the index, and H_p = H_2^{⊗k}, so
    the result is in the natural (Sylvester) order. Two buffers are used in turn, so a pass
    allocates nothing. The 1/√p scale is applied up front: partial sums then stay within
    √p·max|x|, which keeps float16 from overflowing.
    """
    p = x.shape[-1]
    if p < 1 or p & (p - 1):
        raise ValueError(f"fast Walsh-Hadamard transform needs a power of two, got {p}")
    flat = x.reshape(-1, p)  # may be a strided view: the buffers are made contiguous
    src = torch.empty(flat.shape, dtype=x.dtype, device=x.device)
    torch.mul(flat, p**-0.5, out=src)
    dst = torch.empty_like(src)
    half = p // 2
    while half >= 1:
        pairs, out = src.view(-1, 2, half), dst.view(-1, 2, half)  # one bit of the index
        torch.add(pairs[:, 0], pairs[:, 1], out=out[:, 0])
        torch.sub(pairs[:, 0], pairs[:, 1], out=out[:, 1])
        src, dst = dst, src
        half //= 2
    return src.view(x.shape)


class OnlineRotation:
    """x ↦ x·H for H = H_{2^k} ⊗ Q_m, applied through its Kronecker factors.

    Viewing x as a (2^k, m) matrix X, x·(A ⊗ B) = vec(Aᵀ·X·B): two products with the small
    factors instead of one with the dense n×n matrix (for 1536 = 512·3: 512² + 3² instead of
    1536² multiplies per token). From ``FWHT_MIN_ORDER`` on (or as ``fast`` says) the ±1 factor
    runs as a fast Walsh-Hadamard transform, k additions per element instead of 2^k MACs.

    ``power`` and ``odd`` are the float64 CPU masters; the factors are converted once per
    (device, dtype) and cached, so a call on a GPU tensor transfers nothing.
    """

    def __init__(self, width: int, seed: int = 0, fast: bool | None = None):
        if width < 1:
            raise ValueError(f"rotation width must be positive, got {width}")
        self.width, self.seed = width, seed
        self.power = sylvester(width & -width)
        self.odd = random_orthogonal(width // self.power.shape[0], seed)
        self.fast = self.power.shape[0] >= FWHT_MIN_ORDER if fast is None else fast
        self._factors: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The dense H (for small widths and tests)."""
        return torch.kron(self.power, self.odd).to(dtype)

    def factors(self, device: torch.device | str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(Sylvester factor, odd factor) on ``device`` in ``dtype``, converted once."""
        key = (torch.device(device), dtype)
        if key not in self._factors:
            self._factors[key] = (
                self.power.to(key[0], dtype),
                self.odd.to(key[0], dtype),
            )
        return self._factors[key]

    def __call__(self, x: Tensor) -> Tensor:
        """x·H along the last dim, on x's device and in x's dtype."""
        if x.shape[-1] != self.width:
            raise ValueError(f"rotation of width {self.width} got last dim {x.shape[-1]}")
        p, m = self.power.shape[0], self.odd.shape[0]
        power, odd = self.factors(x.device, x.dtype)
        grid = x.reshape(-1, p, m)
        if m > 1:
            grid = grid @ odd
        # Aᵀ·X along the 2^k axis as one product (Sylvester matrices are symmetric: Aᵀ = A)
        rows = grid.transpose(1, 2).reshape(-1, p)
        del grid  # a weight block is ~64 MB: hold as few temporaries as possible at once
        rows = fwht(rows) if self.fast and p > 1 else rows @ power
        return rows.reshape(-1, m, p).transpose(1, 2).reshape(x.shape)
