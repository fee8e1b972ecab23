from __future__ import annotations

import pytest
from torch import nn

from phasecode.errors import PhasecodeError
from phasecode.models.sites import Site, linear_input_sites


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_four_sites_per_layer(tiny_model, arch):
    model = tiny_model(arch)
    sites = linear_input_sites(model)
    assert [s.name for s in sites] == [
        f"layers.{i}.{kind}" for i in range(2) for kind in ("qkv", "o", "gate_up", "down")
    ]
    assert sites[0] == Site(
        "layers.0.qkv",
        "qkv",
        0,
        (
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.k_proj",
            "model.layers.0.self_attn.v_proj",
        ),
    )
    assert sites[6].modules == ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj")
    assert all(isinstance(model.get_submodule(m), nn.Linear) for s in sites for m in s.modules)


def test_shared_modules_read_the_same_input(tiny_model):
    model = tiny_model("llama")
    site = linear_input_sites(model)[2]
    widths = {model.get_submodule(m).in_features for m in site.modules}
    assert widths == {64}


def test_unsupported_model_type(tiny_model):
    model = tiny_model("llama")
    model.config.model_type = "gpt2"
    supported = "gemma3_text, llama, mistral, olmo2, phi3, qwen2, qwen3"
    with pytest.raises(
        PhasecodeError, match=f"unsupported model type .gpt2.; supported: {supported}$"
    ):
        linear_input_sites(model)


def test_missing_layout_names_module(tiny_model):
    model = tiny_model("llama")
    del model.model.layers[1].mlp.down_proj
    with pytest.raises(PhasecodeError, match=r"model\.layers\.1\.mlp\.down_proj"):
        linear_input_sites(model)
