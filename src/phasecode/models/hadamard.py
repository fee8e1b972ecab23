"""Orthogonal Hadamard-based rotations for any width, in plain PyTorch.

A Hadamard matrix of order n spreads one large coordinate evenly over all n, which is what
removes the massive outliers at the ``down_proj`` input (QuaRot-style online rotation). Sylvester
Hadamards exist only for n = 2^k; widths like 1536 = 2^9·3 or 4864 = 2^8·19 are handled as
H_{2^k} ⊗ Q_m with a seeded random orthogonal Q_m for the odd factor m. The result is exactly
orthogonal (up to float rounding), so W·x = (W·R)·(Rᵀ·x) leaves the ANN unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sylvester(order: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The normalised Sylvester Hadamard matrix of a power-of-two order."""
    if order < 1 or order & (order - 1):
        raise ValueError(f"Sylvester Hadamard needs a power of two, got {order}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < order:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / order**0.5


def random_orthogonal(order: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A seeded Haar-random orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(order, order, generator=gen, dtype=dtype))
    return (q * torch.sign(torch.diagonal(r))[None, :]).contiguous()


def hadamard_rotation(width: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """An orthogonal [width, width] matrix H_{2^k} ⊗ Q_m with width = 2^k·m, m odd."""
    power = width & -width  # largest power of two dividing width
    odd = width // power
    rotation = sylvester(power)
    if odd > 1:
        rotation = torch.kron(rotation, random_orthogonal(odd, seed))
    return rotation.to(dtype)


class OnlineRotation:
    """x ↦ x·H for H = H_{2^k} ⊗ Q_m, applied through its Kronecker factors.

    Viewing x as a (2^k, m) matrix X, x·(A ⊗ B) = vec(Aᵀ·X·B): two products with the small
    factors instead of one with the dense n×n matrix (for 1536 = 512·3: 512² + 3² instead of
    1536² multiplies per token). The ±1 Hadamard factor could also run as a fast
    Walsh-Hadamard transform (n log n additions); on CPU the BLAS product is faster.
    """

    def __init__(self, width: int, seed: int = 0):
        self.width, self.seed = width, seed
        self.power = sylvester(width & -width)
        self.odd = random_orthogonal(width // self.power.shape[0], seed)

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The dense H (for folding into weights and for tests)."""
        return torch.kron(self.power, self.odd).to(dtype)

    def __call__(self, x: Tensor) -> Tensor:
        p, m = self.power.shape[0], self.odd.shape[0]
        grid = x.reshape(-1, p, m)
        if m > 1:
            grid = grid @ self.odd.to(x.dtype)
        # Aᵀ·X along the 2^k axis as one GEMM (Sylvester matrices are symmetric: Aᵀ = A)
        rows = grid.transpose(1, 2).reshape(-1, p) @ self.power.to(x.dtype)
        return rows.reshape(-1, m, p).transpose(1, 2).reshape(x.shape)
