import json
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from phasecode import artifacts
from phasecode.artifacts import FORMAT_VERSION, artifact_exists, load_artifact, save_artifact
from phasecode.errors import PhasecodeError

FP = "a1b2c3d4e5f6a7b8c9d0"


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "layers.0.mlp.theta": torch.randn(4, 8, generator=g, dtype=torch.float64),
        "layers.0.mlp.counts": torch.randint(-(2**40), 2**40, (5,), generator=g),
        "layers.1.attn.scale": torch.randn(3, generator=g).t(),
        "empty": torch.zeros(0, dtype=torch.float32),
        "half": torch.randn(2, 3, generator=g).to(torch.bfloat16),
    }


def _metadata() -> dict:
    return {
        "method": "phase",
        "timesteps": 8,
        "allocation": {"attn": 4, "mlp": 8},
        "sites": ["layers.0.mlp", "layers.1.attn"],
        "base_model": {"name": "SmolLM2-135M", "fingerprint": FP},
    }


def _other_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_round_trip_bit_exact(tmp_path: Path) -> None:
    d = tmp_path / "nested" / "art"
    tensors = _tensors()
    assert save_artifact(d, tensors, _metadata()) == d
    assert artifact_exists(d)
    loaded, meta = load_artifact(d, expected_fingerprint=FP)
    assert loaded.keys() == tensors.keys()
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and loaded[k].device.type == "cpu"
        assert loaded[k].is_contiguous()
        assert torch.equal(loaded[k], v)
    assert {k: meta[k] for k in _metadata()} == _metadata()
    assert meta["format_version"] == FORMAT_VERSION
    assert len(meta["sha256"]) == 64 and meta["created"]
    assert _other_files(d) == ["neurons.json", "neurons.safetensors"]


def test_custom_name_and_overwrite_flag(tmp_path: Path) -> None:
    save_artifact(tmp_path, {"x": torch.ones(2)}, {}, name="extra")
    assert artifact_exists(tmp_path, "extra") and not artifact_exists(tmp_path)
    with pytest.raises(PhasecodeError, match="already exists"):
        save_artifact(tmp_path, {"x": torch.zeros(2)}, {}, name="extra", overwrite=False)
    assert torch.equal(load_artifact(tmp_path, name="extra")[0]["x"], torch.ones(2))
    with pytest.raises(PhasecodeError, match="invalid artifact name"):
        save_artifact(tmp_path, {}, {}, name="../evil")


def test_flipped_byte_is_refused(tmp_path: Path) -> None:
    save_artifact(tmp_path, _tensors(), _metadata())
    path = tmp_path / "neurons.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PhasecodeError, match="checksum of neurons.safetensors does not match"):
        load_artifact(tmp_path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    save_artifact(tmp_path, _tensors(), _metadata())
    path = tmp_path / "neurons.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(PhasecodeError, match="corrupt artifact: checksum"):
        load_artifact(tmp_path)


def test_unparseable_safetensors_with_matching_checksum(tmp_path: Path) -> None:
    import hashlib

    save_artifact(tmp_path, _tensors(), _metadata())
    garbage = b"not a safetensors file"
    (tmp_path / "neurons.safetensors").write_bytes(garbage)
    meta = json.loads((tmp_path / "neurons.json").read_text())
    meta["sha256"] = hashlib.sha256(garbage).hexdigest()
    (tmp_path / "neurons.json").write_text(json.dumps(meta))
    with pytest.raises(PhasecodeError, match="cannot parse"):
        load_artifact(tmp_path)


def test_missing_tensor_file(tmp_path: Path) -> None:
    save_artifact(tmp_path, _tensors(), _metadata())
    (tmp_path / "neurons.safetensors").unlink()
    with pytest.raises(PhasecodeError, match="corrupt artifact: cannot read"):
        load_artifact(tmp_path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff\xfe"])
def test_invalid_json(tmp_path: Path, text: str) -> None:
    save_artifact(tmp_path, _tensors(), _metadata())
    (tmp_path / "neurons.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(PhasecodeError, match="corrupt artifact"):
        load_artifact(tmp_path)


@pytest.mark.parametrize(("version", "match"), [(FORMAT_VERSION + 1, "upgrade"), ("1", "unknown")])
def test_format_version(tmp_path: Path, version: object, match: str) -> None:
    save_artifact(tmp_path, _tensors(), _metadata())
    meta = json.loads((tmp_path / "neurons.json").read_text())
    meta["format_version"] = version
    (tmp_path / "neurons.json").write_text(json.dumps(meta))
    with pytest.raises(PhasecodeError, match=match):
        load_artifact(tmp_path)


def test_fingerprint_mismatch_names_the_other_model(tmp_path: Path) -> None:
    save_artifact(tmp_path, _tensors(), _metadata())
    with pytest.raises(PhasecodeError) as exc:
        load_artifact(tmp_path, expected_fingerprint="ffff0000")
    msg = str(exc.value)
    assert "SmolLM2-135M" in msg and FP[:12] in msg and "refusing" in msg
    assert "\n" not in msg


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PhasecodeError, match="not a phasecode artifact: .*no neurons.json"):
        load_artifact(tmp_path / "nope")
    assert not artifact_exists(tmp_path / "nope")


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": float("nan")}])
def test_unserialisable_metadata_writes_nothing(tmp_path: Path, bad: dict) -> None:
    d = tmp_path / "art"
    with pytest.raises(PhasecodeError, match="not JSON-serialisable"):
        save_artifact(d, _tensors(), bad)
    assert not d.exists()


def test_failure_mid_write_keeps_previous_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_artifact(tmp_path, _tensors(), _metadata())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args: object, **kwargs: object) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_artifact(tmp_path, {"other": torch.ones(1)}, {"method": "new"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_artifact(tmp_path)[1]["method"] == "phase"


def test_failure_between_renames_is_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_artifact(tmp_path, _tensors(), _metadata())
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if str(dst).endswith(".json"):
            raise OSError("crash before commit")
        real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", replace)
    with pytest.raises(OSError, match="crash before commit"):
        save_artifact(tmp_path, {"other": torch.ones(1)}, {"method": "new"})
    assert _other_files(tmp_path) == ["neurons.json", "neurons.safetensors"]
    with pytest.raises(PhasecodeError, match="checksum"):
        load_artifact(tmp_path)


def test_unrelated_files_are_kept(tmp_path: Path) -> None:
    (tmp_path / "calibration.safetensors").write_bytes(b"keep me")
    (tmp_path / "README").write_text("hello")
    save_artifact(tmp_path, _tensors(), _metadata())
    save_artifact(tmp_path, {"x": torch.ones(3)}, _metadata())
    assert (tmp_path / "calibration.safetensors").read_bytes() == b"keep me"
    assert (tmp_path / "README").read_text() == "hello"
    assert _other_files(tmp_path) == [
        "README",
        "calibration.safetensors",
        "neurons.json",
        "neurons.safetensors",
    ]
    assert list(load_artifact(tmp_path)[0]) == ["x"]
