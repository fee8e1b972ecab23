from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from phasecode.errors import PhasecodeError
from phasecode.models import devices
from phasecode.models.devices import (
    DTYPES,
    available_bytes,
    check_memory,
    parameter_count,
    resolve_device,
    resolve_dtype,
)
from phasecode.models.loading import load_model


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend two CUDA GPUs are visible, the current one being cuda:1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")


def test_cpu_meta_and_auto_without_gpu(no_gpu):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("meta") == torch.device("meta")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_gpu(no_gpu, spec):
    with pytest.raises(PhasecodeError, match=f"--device {spec}: no CUDA GPU is visible"):
        resolve_device(spec)


def test_cuda_indices(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)  # the index is made explicit
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(PhasecodeError, match=r"cuda:2: only 2 CUDA GPU\(s\) are visible"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "mps:0", ""])
def test_garbage_device(spec):
    with pytest.raises(PhasecodeError, match="is not a device"):
        resolve_device(spec)


def test_dtypes():
    cpu = torch.device("cpu")
    assert {name: resolve_dtype(name, cpu) for name in DTYPES} == DTYPES
    with pytest.raises(PhasecodeError, match="--dtype 'float64' is not supported"):
        resolve_dtype("float64", cpu)
    with pytest.raises(PhasecodeError, match="is not supported"):
        devices.check_dtype(torch.int8, cpu)


def test_bfloat16_refused_on_a_gpu_without_it(two_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    gpu = torch.device("cuda", 0)
    with pytest.raises(PhasecodeError, match=r"cuda:0 \(Fake GPU\) does not support bfloat16"):
        resolve_dtype("bfloat16", gpu)
    assert resolve_dtype("float16", gpu) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("bfloat16", gpu) == torch.bfloat16


def test_float16_runs_on_cpu(tmp_path, tiny_model, tiny_tokenizer):
    """The reason float16 is accepted on the CPU: a whole forward pass works there."""
    reference = tiny_model("qwen2")
    reference.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path), dtype=resolve_dtype("float16", torch.device("cpu")))
    ids = torch.tensor([[0, 5, 7, 9]])
    with torch.no_grad():
        logits = model(ids).logits
        expected = reference(ids).logits
    assert logits.dtype == torch.float16
    torch.testing.assert_close(logits.float(), expected, rtol=0, atol=2e-2)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_parameter_count_matches_the_model(arch, tiny_model):
    model = tiny_model(arch)
    assert parameter_count(model.config) == sum(p.numel() for p in model.parameters())


def test_parameter_count_tied_and_biased():
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,  # not hidden / heads
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_available_bytes():
    assert available_bytes(torch.device("meta")) is None
    cpu = available_bytes(torch.device("cpu"))
    assert cpu is None or cpu > 0


def test_check_memory(monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(devices, "available_bytes", lambda device: 10 * 1024**3)
    assert check_memory("m", 1000, torch.bfloat16, gpu) == 2000
    with pytest.raises(PhasecodeError) as info:
        check_memory("org/big-7b", 7_000_000_000, torch.bfloat16, gpu)
    assert str(info.value) == (
        "model org/big-7b needs ~13 GiB for its weights in bfloat16, but cuda:0 has 10 GiB "
        "free; use --device-map auto or a smaller dtype"
    )
    with pytest.raises(PhasecodeError, match="cpu has 10 GiB free; use a smaller dtype"):
        check_memory("org/big-7b", 7_000_000_000, torch.float32, torch.device("cpu"))
    assert check_memory("org/big-7b", 7_000_000_000, torch.bfloat16, gpu, "auto") == 14 * 10**9


def test_unknown_memory_is_not_refused(monkeypatch):
    monkeypatch.setattr(devices, "available_bytes", lambda device: None)
    assert check_memory("m", 10**12, torch.float32, torch.device("meta")) == 4 * 10**12


def test_device_map():
    devices.check_device_map(None)
    devices.check_device_map("auto")
    with pytest.raises(PhasecodeError, match="--device-map 'sequential' is not supported"):
        devices.check_device_map("sequential")
