"""Hadamard rotations: exactly orthogonal for any width, and they spread outliers."""

from __future__ import annotations

import pytest
import torch

from phasecode.models.hadamard import (
    FWHT_MIN_ORDER,
    OnlineRotation,
    fwht,
    hadamard_rotation,
    random_orthogonal,
    sylvester,
)


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


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 12, 64, 96, 1536, 4864])
def test_online_rotation_matches_the_dense_matrix(n, fast):
    rotation = OnlineRotation(n, seed=3, fast=fast)
    dense = hadamard_rotation(n, seed=3, dtype=torch.float64)
    x = torch.randn(2, 5, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(rotation(x), x @ dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(rotation(x[0, 0]), x[0, 0] @ dense, rtol=0, atol=1e-12)
    if n <= 1536:
        torch.testing.assert_close(rotation.matrix(), dense, rtol=0, atol=0)


@pytest.mark.parametrize("p", [1, 2, 8, 1024])
def test_fwht_is_the_sylvester_product(p):
    x = torch.randn(3, 4, p, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ sylvester(p), rtol=0, atol=1e-13)
    strided = x.transpose(0, 1)  # any layout, e.g. one column of a weight
    torch.testing.assert_close(fwht(strided), strided @ sylvester(p), rtol=0, atol=1e-13)


def test_fwht_rejects_non_powers_of_two():
    with pytest.raises(ValueError, match="power of two"):
        fwht(torch.zeros(2, 12))


def test_fast_transform_is_chosen_for_large_power_factors():
    assert not OnlineRotation(FWHT_MIN_ORDER // 2 * 3).fast
    assert OnlineRotation(FWHT_MIN_ORDER * 7).fast
    assert not OnlineRotation(FWHT_MIN_ORDER * 7, fast=False).fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_online_rotation_follows_the_input_dtype_and_caches_factors(dtype):
    rotation = OnlineRotation(96, seed=1)
    x = torch.randn(4, 96).to(dtype)
    y = rotation(x)
    assert y.dtype == dtype and y.shape == x.shape
    expected = x.double() @ hadamard_rotation(96, 1, torch.float64)
    torch.testing.assert_close(
        y.double(), expected, rtol=0, atol=0.05 if dtype != torch.float32 else 1e-5
    )
    factors = rotation.factors(x.device, dtype)
    assert rotation.factors("cpu", dtype) is factors  # converted once, reused by every call
    assert factors[0].dtype == dtype


def test_online_rotation_follows_the_input_device():
    """On "meta" a factor left on the CPU would make the product raise."""
    rotation = OnlineRotation(96, seed=1)
    y = rotation(torch.empty(3, 96, device="meta"))
    assert y.device.type == "meta" and y.shape == (3, 96)
    assert rotation.power.device.type == "cpu"  # the masters stay where they were built


def test_online_rotation_checks_the_width():
    with pytest.raises(ValueError, match="width 96"):
        OnlineRotation(96)(torch.zeros(2, 64))
