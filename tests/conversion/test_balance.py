from __future__ import annotations

import torch

from phasecode.conversion.balance import ChannelPeaks, fold_up_scales
from phasecode.conversion.handlers import Passthrough
from phasecode.conversion.surgery import SpikingSurgery


def test_balanced_product_leaves_the_model_unchanged(tiny_model):
    model = tiny_model("llama").double()
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with SpikingSurgery(model, Passthrough()):
        reference = model(tokens).logits
    peaks = ChannelPeaks(model.config.num_hidden_layers)
    with SpikingSurgery(model, peaks):
        model(tokens)
    scales = peaks.scales()
    assert scales.shape == (2, model.config.intermediate_size)
    assert not torch.allclose(scales, torch.ones_like(scales))
    fold_up_scales(model, scales)
    with SpikingSurgery(model, Passthrough(), silu_scales=scales):
        balanced = model(tokens).logits
    torch.testing.assert_close(balanced, reference, rtol=1e-9, atol=1e-9)
    with SpikingSurgery(model, Passthrough()):  # folded weights, no division: the product is off
        without = model(tokens).logits
    assert not torch.allclose(without, reference, atol=1e-6)


def test_scales_equalise_operand_peaks():
    peaks = ChannelPeaks(1)
    peaks("layers.0.silu", torch.tensor([[4.0, 1.0, 0.0]]))
    peaks("layers.0.up", torch.tensor([[1.0, 9.0, 2.0]]))
    peaks("layers.0.q", torch.full((1, 3), 100.0))  # other sites are ignored
    s = peaks.scales()[0]
    torch.testing.assert_close(s[:2], torch.tensor([2.0, 1.0 / 3.0]))
    balanced_a = torch.tensor([4.0, 1.0]) / s[:2]
    balanced_b = torch.tensor([1.0, 9.0]) * s[:2]
    torch.testing.assert_close(balanced_a, balanced_b)
    assert 1e-3 <= s[2] <= 1e3  # a dead channel gets a bounded scale
