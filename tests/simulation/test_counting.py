"""Counting rules (simulation/counting.py), energy formulas and spike masking."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from phasecode.coding.baselines import las
from phasecode.coding.neuron import (
    decode,
    fast_site_value,
    mask_spikes,
    spikes,
)
from phasecode.errors import PhasecodeError
from phasecode.models.hadamard import OnlineRotation
from phasecode.simulation.counting import ELEMENTWISE_MACS, NEURON_OPS, Counter, OpCount
from phasecode.simulation.energy import PRESETS, energy, load_costs
from phasecode.simulation.trains import SpikeTrain, encode

KEY = ("layers.0", "op")


def _train(spike_lists: list[list[int]], width: int = 1) -> SpikeTrain:
    """A train [T, tokens, width] from per-step spike lists over tokens×width entries."""
    spikes = torch.tensor(spike_lists, dtype=torch.int8).view(len(spike_lists), -1, width)
    return SpikeTrain(spikes, torch.ones(len(spike_lists)))


def test_linear_counts_one_ac_per_spike_and_output():
    train = _train([[1, 0, -1, 1], [0, 0, 1, 0]], width=2)  # T=2, 2 tokens, fan-in 2
    counter = Counter()
    counter.linear(KEY, train, nn.Linear(2, 3, bias=False))
    snn, ann = counter.snn[KEY], counter.ann[KEY]
    assert snn.ac == 4 * 3  # 4 spikes (a −1 counts once), fan-out 3
    assert snn.mac == 2 * 2 * 3  # d(t) scaling: T × tokens × outputs
    assert snn.bit_reads == 12 and snn.reads == 12 + 2 * snn.mac
    assert ann.mac == 2 * 2 * 3 and ann.reads == 2 * ann.mac and ann.writes == 2 * 3


def test_matmul_counts_only_visible_pairs():
    t, heads, length, depth = 2, 1, 3, 2
    gen = torch.Generator().manual_seed(0)
    q = SpikeTrain(
        torch.randint(-1, 2, (t, 1, heads, length, depth), generator=gen, dtype=torch.int8),
        torch.ones(t),
    )
    k = SpikeTrain(
        torch.randint(-1, 2, (t, 1, heads, length, depth), generator=gen, dtype=torch.int8),
        torch.ones(t),
    )
    visible = torch.tril(torch.ones(length, length, dtype=torch.bool))
    counter = Counter()
    counter.matmul(KEY, q, k, visible, keys_first=True)
    expected = 0
    for step in range(t):  # brute force: each spike meets every visible partner
        for i in range(length):
            for j in range(length):
                if visible[i, j]:
                    expected += int((q.spikes[step, 0, 0, i] != 0).sum())
                    expected += int((k.spikes[step, 0, 0, j] != 0).sum())
    assert counter.snn[KEY].ac == expected
    assert counter.ann[KEY].mac == 6 * depth  # 6 visible pairs


def test_product_and_elementwise_and_sites():
    a, b = _train([[1, 0, 1], [0, 1, 0]]), _train([[0, 0, 1], [1, 1, 1]])
    counter = Counter()
    counter.product(KEY, a, b)
    assert counter.snn[KEY].ac == 3 + 4 and counter.ann[KEY].mac == 3
    counter.elementwise(("l", "norm"), "rmsnorm", 10, timesteps=4)
    assert counter.snn[("l", "norm")].mac == ELEMENTWISE_MACS["rmsnorm"] * 40
    assert counter.ann[("l", "norm")].mac == ELEMENTWISE_MACS["rmsnorm"] * 10
    counter.site(("l", "site"), a)
    site = counter.snn[("l", "site")]
    assert (site.spikes, site.neuron_steps, site.neuron_ops) == (3, 6, NEURON_OPS * 6)


def test_rotation_is_priced_as_a_walsh_hadamard_transform():
    counter = Counter()
    counter.rotation(KEY, 96, OnlineRotation(96))  # 96 = 32 · 3
    count = counter.snn[KEY]
    assert count.ac == 96 * math.log2(32) and count.mac == 96 * 3
    assert KEY not in counter.ann


def test_energy_formulas():
    counts = OpCount(mac=10, ac=100, reads=50, writes=5, bit_reads=64, bit_writes=32, neuron_ops=7)
    costs = PRESETS["45nm-fp32"]
    joules = energy(counts, costs)
    assert joules["compute_j"] == pytest.approx((10 * 4.6 + 100 * 0.9) * 1e-12)
    rw = 50 * 5.0 + 5 * 5.0 + (64 + 32) * 5.0 / 32
    assert joules["rw_j"] == pytest.approx(rw * 1e-12)
    masked = energy(counts, costs, mask_cost=True)
    assert masked["neuron_j"] == pytest.approx(2 * joules["neuron_j"])  # Eq. 60


def test_cost_presets_and_files(tmp_path):
    assert load_costs("45nm-int8").word_bits == 8
    path = tmp_path / "costs.json"
    path.write_text(
        json.dumps({"mac_pj": 1, "ac_pj": 0.1, "read_pj": 2, "write_pj": 2, "word_bits": 16})
    )
    assert load_costs(str(path)).mac_pj == 1
    with pytest.raises(PhasecodeError, match="unknown cost preset"):
        load_costs("7nm")
    path.write_text(json.dumps({"mac": 1}))
    with pytest.raises(PhasecodeError, match="expected a JSON object"):
        load_costs(str(path))


def test_masking_keeps_a_window_after_the_first_spike():
    train = torch.tensor([[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1]])  # [T=3, 4 neurons]
    assert torch.equal(mask_spikes(train, 0), train)
    first_only = mask_spikes(train, 2)
    assert first_only.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert mask_spikes(train, 1).tolist() == [[0, 1, 1, 1], [1, 0, 1, 1], [1, 0, 0, 0]]
    with pytest.raises(PhasecodeError, match="mask strength"):
        mask_spikes(train, -1)
    with pytest.raises(PhasecodeError, match="mask strength"):
        mask_spikes(train, 3)


@pytest.mark.parametrize("strength", [0, 1, 3])
def test_masked_fast_kernel_equals_masked_spike_train(strength):
    table = las(torch.tensor([2.0]), 5)
    x = torch.randn(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    table = table.to(torch.float64)
    train = spikes(x[None], table)
    expected = decode(mask_spikes(train, strength), table)[0]
    assert torch.equal(fast_site_value(x, table, compiled=False, mask_strength=strength), expected)
    assert torch.equal(encode(x, table, strength).value(), expected)
    if strength:
        assert not torch.equal(expected, decode(train, table)[0])
