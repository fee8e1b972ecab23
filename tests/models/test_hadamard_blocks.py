"""The online rotation as one small dense block plus butterflies equals x·H to rounding."""

from __future__ import annotations

import pytest
import torch

from phasecode.models import hadamard
from phasecode.models.hadamard import OnlineRotation, fwht, hadamard_rotation, sylvester


@pytest.mark.parametrize("dense_width", [1, 3, 12, 64, 4096])  # all butterflies … all dense
@pytest.mark.parametrize("width", [3, 64, 96, 1536])
def test_every_split_of_the_sylvester_factor_gives_x_times_h(monkeypatch, width, dense_width):
    monkeypatch.setattr(hadamard, "DENSE_WIDTH", dense_width)
    rotation = OnlineRotation(width, seed=4)
    power, odd = rotation.power.shape[0], rotation.odd.shape[0]
    assert rotation.dense_order == min(
        power, max(1, 2 ** (max(dense_width // odd, 1).bit_length() - 1))
    )
    x = torch.randn(3, 7, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(
        rotation(x), x @ hadamard_rotation(width, 4, torch.float64), rtol=0, atol=1e-12
    )
    single = x.float()
    expected = (single.double() @ hadamard_rotation(width, 4, torch.float64)).float()
    torch.testing.assert_close(rotation(single), expected, rtol=1e-5, atol=1e-5)


def test_smollm2_widths_split_as_measured():
    assert OnlineRotation(1536).dense_order == 16  # 1536 = 512·3: a 48-wide block, 5 passes
    assert OnlineRotation(64).dense_order == 64  # a head: one dense GEMM, as before


def test_a_head_rotation_is_one_gemm_bit_for_bit():
    """head_dim ≤ 64 (no odd factor): x·H_64 exactly as the plain product computes it."""
    x = torch.randn(2, 3, 5, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        OnlineRotation(64)(x), (x.reshape(-1, 64) @ sylvester(64, x.dtype)).view_as(x)
    )


@pytest.mark.parametrize("block", [1, 3, 16])
def test_blocked_fwht_is_the_kronecker_product_with_identity(block):
    p = 8
    x = torch.randn(5, p * block, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = x @ torch.kron(sylvester(p), torch.eye(block, dtype=torch.float64))
    torch.testing.assert_close(fwht(x, block), expected, rtol=0, atol=1e-13)


def test_a_strided_input_is_not_written():
    rotation = OnlineRotation(96, seed=2)
    weight = torch.randn(96, 10, dtype=torch.float64)
    column = weight.T  # strided, as when a weight is folded column-wise
    before = weight.clone()
    torch.testing.assert_close(
        rotation(column), column @ hadamard_rotation(96, 2, torch.float64), rtol=0, atol=1e-12
    )
    assert torch.equal(weight, before)
