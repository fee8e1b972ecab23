"""Hadamard rotations: exactly orthogonal for any width, and they spread outliers."""

from __future__ import annotations

import pytest
import torch

from phasecode.models.hadamard import hadamard_rotation, random_orthogonal, sylvester


def _assert_orthogonal(r: torch.Tensor, atol: float = 1e-12) -> None:
    n = r.shape[0]
    assert r.shape == (n, n)
    eye = torch.eye(n, dtype=r.dtype)
    torch.testing.assert_close(r @ r.T, eye, atol=atol, rtol=0)
    torch.testing.assert_close(r.T @ r, eye, atol=atol, rtol=0)


@pytest.mark.parametrize("n", [1, 3, 7, 64, 96, 576, 896, 1536])
def test_rotation_is_orthogonal(n):
    r = hadamard_rotation(n, seed=0, dtype=torch.float64)
    assert r.dtype == torch.float64
    _assert_orthogonal(r)


def test_wide_rotation_is_orthogonal():
    """4864 = 2^8 * 19 (Qwen2-0.5B's MLP width). A full Gram matrix is ~10^11 flops, so check
    a random block of rows exactly and the whole matrix on random probe vectors."""
    n = 4864
    r = hadamard_rotation(n, seed=0, dtype=torch.float64)
    assert r.shape == (n, n)
    gen = torch.Generator().manual_seed(1)
    rows = torch.randperm(n, generator=gen)[:384]
    torch.testing.assert_close(
        r[rows] @ r.T, torch.eye(n, dtype=torch.float64)[rows], atol=1e-12, rtol=0
    )
    torch.testing.assert_close(
        r.T[rows] @ r, torch.eye(n, dtype=torch.float64)[rows], atol=1e-12, rtol=0
    )
    probes = torch.randn(n, 16, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(r.T @ (r @ probes), probes, atol=1e-11, rtol=0)


def test_power_of_two_is_plain_sylvester():
    r = hadamard_rotation(64, seed=5, dtype=torch.float64)
    torch.testing.assert_close(r, sylvester(64), atol=0, rtol=0)
    assert set(r.abs().unique().tolist()) == {1 / 8}  # every entry is ±1/sqrt(64)
    # Sylvester's recursion: H_2n = [[H, H], [H, -H]] (normalised)
    h = sylvester(32) / 2**0.5
    torch.testing.assert_close(r, torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)]))


def test_composite_width_is_kronecker_of_sylvester_and_random_orthogonal():
    # 1536 = 2^9 * 3
    r = hadamard_rotation(1536, seed=3, dtype=torch.float64)
    expected = torch.kron(sylvester(512), random_orthogonal(3, 3))
    torch.testing.assert_close(r, expected, atol=0, rtol=0)


def test_rotation_default_dtype_and_seeding():
    r = hadamard_rotation(96)
    assert r.dtype == torch.float32 and r.shape == (96, 96)
    torch.testing.assert_close(r, hadamard_rotation(96), atol=0, rtol=0)  # deterministic
    assert not torch.equal(hadamard_rotation(96, seed=1), r)  # the odd factor is seeded
    torch.testing.assert_close(r @ r.T, torch.eye(96), atol=1e-5, rtol=0)


def test_random_orthogonal_is_seeded_and_orthogonal():
    q = random_orthogonal(19, seed=4)
    _assert_orthogonal(q)
    torch.testing.assert_close(q, random_orthogonal(19, seed=4), atol=0, rtol=0)
    assert not torch.equal(q, random_orthogonal(19, seed=5))


@pytest.mark.parametrize("order", [0, -4, 3, 6, 12, 96, 1536])
def test_sylvester_rejects_non_powers_of_two(order):
    with pytest.raises(ValueError, match="power of two"):
        sylvester(order)


@pytest.mark.parametrize("order", [1, 2, 4, 128])
def test_sylvester_is_orthogonal_with_equal_magnitudes(order):
    h = sylvester(order)
    _assert_orthogonal(h)
    assert torch.allclose(h.abs(), torch.full_like(h, order**-0.5))


@pytest.mark.parametrize("width", [64, 96, 1536])
def test_rotated_linear_layer_is_unchanged(width):
    """y = x Wᵀ = (x R)(W R)ᵀ because R Rᵀ = I: rotating the input online and the weight offline
    leaves the layer's output as it was."""
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(width, 24, bias=True, dtype=torch.float64)
    x = torch.randn(2, 5, width, generator=gen, dtype=torch.float64)
    x[0, 1, 7] = 300.0  # an outlier channel, as at a down_proj input
    r = hadamard_rotation(width, seed=2, dtype=torch.float64)
    rotated = torch.nn.Linear(width, 24, bias=True, dtype=torch.float64)
    with torch.no_grad():
        rotated.weight.copy_(linear.weight @ r)
        rotated.bias.copy_(linear.bias)
        torch.testing.assert_close(rotated(x @ r), linear(x), atol=1e-10, rtol=1e-10)
        # and the rotation is not a no-op on the input itself
        assert not torch.allclose(x @ r, x)


def test_one_hot_outlier_is_spread_over_all_channels():
    n = 1536
    r = hadamard_rotation(n, seed=0, dtype=torch.float64)
    for channel in (0, 700, n - 1):
        x = torch.zeros(n, dtype=torch.float64)
        x[channel] = 100.0
        y = x @ r
        torch.testing.assert_close(y.norm(), x.norm())  # energy kept
        # each Sylvester factor entry is ±1/sqrt(512) and |Q_3| <= 1
        assert y.abs().max() <= 100.0 / 512**0.5 + 1e-9
        assert y.abs().max() < 0.05 * x.abs().max()
        assert (y != 0).sum() >= n // 3 * 2  # most channels now carry some of it
