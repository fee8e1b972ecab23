"""The coded attention equals eager attention with a neuron on the probabilities.

Exactness: each row's softmax and the element-wise neuron do not care how rows are blocked, and
the keys a block leaves out carry p = SN(p) = 0, so only the summation order of the GEMMs and
of the softmax's row sum may differ: within float32 rounding. A probability within that
rounding of a threshold could code differently; the seeded data here has none, so the coded
outputs agree to float32 rounding (and exactly where nothing is left out).
"""

from __future__ import annotations

import pytest
import torch

from phasecode.coding import attention
from phasecode.coding.attention import _key_ends, coded_attention
from phasecode.coding.baselines import las
from phasecode.coding.neuron import fast_site_value, fused_arguments

BATCH, HEADS, KV_HEADS, ROWS, PREFIX, DIM = 2, 4, 2, 24, 3, 8
MIN = torch.finfo(torch.float32).min


def _inputs(dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(3)
    length = PREFIX + ROWS
    q = torch.randn(BATCH, HEADS, ROWS, DIM, generator=gen, dtype=dtype)
    k = torch.randn(BATCH, KV_HEADS, length, DIM, generator=gen, dtype=dtype)
    v = torch.randn(BATCH, KV_HEADS, length, DIM, generator=gen, dtype=dtype)
    causal = torch.ones(ROWS, length, dtype=torch.bool).tril(PREFIX)
    mask = torch.where(causal, 0.0, MIN).to(dtype)[None, None].expand(BATCH, 1, -1, -1)
    return q, k, v, mask


def _reference(q, k, v, mask, table) -> torch.Tensor:
    """surgery.reference_attention with the neuron stepped by ``value``: [B, S, Hq, D]."""
    groups = HEADS // KV_HEADS
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = q @ k.transpose(2, 3) * DIM**-0.5 + mask[..., : k.shape[-2]]
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(q.dtype)
    coded = fast_site_value(probs, table, compiled=False)  # bit-identical to stepping ``value``
    return (coded @ v).transpose(1, 2)


@pytest.fixture
def table():
    return las(torch.tensor([1.0]), 6)


@pytest.mark.parametrize("block_elements", [1, 300, 2**20])  # a row per block … one block
def test_blocked_coded_attention_matches_the_reference(table, monkeypatch, block_elements):
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", block_elements)
    q, k, v, mask = _inputs()
    neuron = fused_arguments(table, 0, q)
    got = coded_attention(q, k, v, mask, DIM**-0.5, neuron, compiled=False)
    expected = _reference(q, k, v, mask, table)
    assert got.shape == (BATCH, ROWS, HEADS, DIM)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if block_elements == 2**20:  # one block sees every key: the same arithmetic
        assert torch.equal(got, expected.contiguous())


def test_coding_happens_inside_the_kernel(table):
    q, k, v, mask = _inputs()
    neuron = fused_arguments(table, 0, q)
    coded = coded_attention(q, k, v, mask, DIM**-0.5, neuron, compiled=False)
    plain = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=DIM**-0.5, enable_gqa=True
    ).transpose(1, 2)
    assert (coded - plain).abs().max() > 1e-3  # T=6 probabilities are coarse


def test_masking_strength_reaches_the_kernel(table):
    q, k, v, mask = _inputs()
    full = coded_attention(q, k, v, mask, DIM**-0.5, fused_arguments(table, 0, q), False)
    masked = coded_attention(q, k, v, mask, DIM**-0.5, fused_arguments(table, 5, q), False)
    assert not torch.equal(full, masked)


def test_without_a_mask_every_key_is_attended(table):
    q, k, v, _ = _inputs()
    neuron = fused_arguments(table, 0, q)
    got = coded_attention(q, k, v, None, DIM**-0.5, neuron, compiled=False)
    torch.testing.assert_close(got, _reference(q, k, v, torch.zeros(1, 1, 1, 1), table))


def test_key_ends_skip_only_keys_no_row_of_the_block_sees():
    causal = torch.ones(4, 6, dtype=torch.bool).tril(2)  # 2 prefix keys, 4 rows
    mask = torch.where(causal, 0.0, MIN)[None, None]
    assert _key_ends(mask, 4, 2, 6) == [4, 6]
    assert _key_ends(mask, 4, 3, 6) == [5, 6]
    assert _key_ends(None, 4, 3, 6) == [6, 6]
    blind = mask.clone()
    blind[..., 0, :] = MIN  # a row that sees nothing: uniform over every key
    assert _key_ends(blind, 4, 2, 6) == [6, 6]
    padded = torch.cat([mask, torch.zeros(1, 1, 4, 6)])
    assert _key_ends(padded, 4, 2, 6) == [6, 6]  # another batch row sees every key


def test_bfloat16_inputs_follow_the_reference_dtypes(table):
    q, k, v, mask = (t.to(torch.bfloat16) for t in _inputs())
    neuron = fused_arguments(table, 0, q)
    assert neuron[0].dtype == torch.float32  # the neuron fires in float32
    got = coded_attention(q, k, v, mask, DIM**-0.5, neuron, compiled=False)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, _reference(q, k, v, mask, table), rtol=0.02, atol=0.02)
