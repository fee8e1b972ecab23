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
    meta["metadata_sha256"] = artifacts.metadata_checksum(meta)  # a consistent forgery
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


# --- the JSON half of the artifact is checksummed too -------------------------------------


def _converted_metadata() -> dict:
    """Shaped like conversion/store.py's record; every edited string below occurs once."""
    return {
        "kind": "spiking-model",
        "spec": {"method": "mgpc", "timesteps": 8, "grains": 2, "prefix_tokens": [1, 7]},
        "sites": ["layers.0.mlp", "layers.1.attn"],
        "allocation": [[3, 5], [2, 6]],
        "base_model": {"name": "SmolLM2-135M", "fingerprint": FP},
        "report": {"seconds": {"training": 12.5}, "mean_ratio": 1.25},
        "loss_phases": ["threshold", "base"],
    }


def _edit_text(path: Path, old: str, new: str) -> None:
    """What a person with a text editor does: change one spot, keep the rest byte for byte."""
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"timesteps": 8', '"timesteps": 6'),
        ('"method": "mgpc"', '"method": "las"'),
        ('"grains": 2', '"grains": 3'),
        ('"layers.1.attn"', '"layers.1.mlp"'),
        ("      3,\n", "      4,\n"),  # allocation [[3, 5], ...] -> [[4, 5], ...]
        ('"name": "SmolLM2-135M"', '"name": "Llama-2-7b"'),
        ('"kind": "spiking-model"', '"kind": "neurons"'),
        ('"threshold"', '"base2"'),  # loss_phases label the loss curve's columns
        ('"format_version": 2', '"format_version": 2, "extra": true'),  # an added key
    ],
)
def test_an_edited_json_is_refused(tmp_path: Path, old: str, new: str) -> None:
    save_artifact(tmp_path, _tensors(), _converted_metadata())
    load_artifact(tmp_path)  # intact before the edit
    _edit_text(tmp_path / "neurons.json", old, new)
    with pytest.raises(PhasecodeError) as exc:
        load_artifact(tmp_path)
    message = str(exc.value)
    assert "metadata" in message and "edited or is corrupt" in message
    assert str(tmp_path / "neurons.json") in message and "\n" not in message


@pytest.mark.parametrize("key", ["spec", "sites", "allocation", "base_model", "metadata_sha256"])
def test_a_removed_key_is_refused(tmp_path: Path, key: str) -> None:
    save_artifact(tmp_path, _tensors(), _converted_metadata())
    meta = json.loads((tmp_path / "neurons.json").read_text())
    del meta[key]
    (tmp_path / "neurons.json").write_text(json.dumps(meta))
    with pytest.raises(PhasecodeError, match="edited or is corrupt"):
        load_artifact(tmp_path)


def test_informational_edits_and_reformatting_are_accepted(tmp_path: Path) -> None:
    assert set(artifacts.UNPROTECTED_KEYS) == {"created", "report"}
    save_artifact(tmp_path, _tensors(), _converted_metadata())
    path = tmp_path / "neurons.json"
    _edit_text(path, '"training": 12.5', '"training": 99.0')
    _edit_text(path, '"mean_ratio": 1.25', '"mean_ratio": 1.5, "note": "rerun on GPU"')
    meta = json.loads(path.read_text())
    meta["created"] = "2001-01-01T00:00:00+00:00"
    # re-indented and reordered (another editor's save) is not an edit of the content
    path.write_text(json.dumps(dict(reversed(list(meta.items()))), indent=4))
    _, loaded = load_artifact(tmp_path, expected_fingerprint=FP)
    assert loaded["report"]["seconds"]["training"] == 99.0
    assert loaded["report"]["note"] == "rerun on GPU"
    assert loaded["spec"] == _converted_metadata()["spec"]


def test_checksum_is_over_what_a_reader_sees(tmp_path: Path) -> None:
    """Tuples and non-str keys change in the JSON round trip; the checksum must not care."""
    metadata = {"spec": {"prefix_tokens": (1, 2)}, "allocation": {3: 4}}
    save_artifact(tmp_path, _tensors(), metadata)
    _, loaded = load_artifact(tmp_path)
    assert loaded["spec"]["prefix_tokens"] == [1, 2] and loaded["allocation"] == {"3": 4}


def test_format_1_is_refused_with_a_way_out(tmp_path: Path) -> None:
    save_artifact(tmp_path, _tensors(), _converted_metadata())
    meta = json.loads((tmp_path / "neurons.json").read_text())
    meta["format_version"] = 1  # what the previous phasecode wrote: no metadata checksum
    del meta["metadata_sha256"]
    (tmp_path / "neurons.json").write_text(json.dumps(meta))
    with pytest.raises(PhasecodeError) as exc:
        load_artifact(tmp_path)
    message = str(exc.value)
    assert "format 1" in message and "re-run `phasecode convert`" in message
    assert str(tmp_path) in message


def test_check_hook_runs_on_verified_data(tmp_path: Path) -> None:
    save_artifact(tmp_path, _tensors(), _converted_metadata())
    seen: list[int] = []

    def timesteps_match(tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        seen.append(metadata["spec"]["timesteps"])
        if tensors["layers.0.mlp.theta"].shape[1] != metadata["spec"]["timesteps"]:
            raise ValueError(f"spec T={metadata['spec']['timesteps']} but the table has T=8")

    load_artifact(tmp_path, check=timesteps_match)
    assert seen == [8]

    def wrong(tensors: dict[str, torch.Tensor], metadata: dict) -> None:
        tensors["missing"]

    with pytest.raises(PhasecodeError) as exc:
        load_artifact(tmp_path, check=wrong)
    message = str(exc.value)
    assert "disagrees with its tensors" in message and "missing" in message
    assert str(tmp_path) in message


def test_a_foreign_json_of_that_name_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "neurons.json").write_text('{"my": "own file"}')
    with pytest.raises(PhasecodeError, match="not a phasecode artifact"):
        save_artifact(tmp_path, _tensors(), _metadata())
    assert _other_files(tmp_path) == ["neurons.json"]
    assert (tmp_path / "neurons.json").read_text() == '{"my": "own file"}'


def test_a_directory_in_place_of_the_tensor_file_is_refused_first(tmp_path: Path) -> None:
    save_artifact(tmp_path, _tensors(), _metadata())
    (tmp_path / "neurons.safetensors").unlink()
    (tmp_path / "neurons.safetensors").mkdir()
    before = (tmp_path / "neurons.json").read_bytes()
    with pytest.raises(PhasecodeError, match="not a file"):
        save_artifact(tmp_path, _tensors(), _metadata())
    assert (tmp_path / "neurons.json").read_bytes() == before


# --- write_json_atomic -----------------------------------------------------------------------


def test_write_json_atomic_round_trip_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "r.json"
    artifacts.write_json_atomic(path, {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    artifacts.write_json_atomic(path, {"x": 3})
    assert json.loads(path.read_text()) == {"x": 3}
    assert _other_files(path.parent) == ["r.json"]


def test_write_json_atomic_on_a_directory_refuses_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(PhasecodeError) as exc:
        artifacts.write_json_atomic(target, {"x": 1})
    assert str(target) in str(exc.value) and "directory" in str(exc.value)
    assert _other_files(tmp_path) == ["out"] and _other_files(target) == []


def test_write_json_atomic_under_a_file_refuses(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("keep")
    with pytest.raises(PhasecodeError, match="cannot write .*file/r.json"):
        artifacts.write_json_atomic(tmp_path / "file" / "r.json", {"x": 1})
    assert _other_files(tmp_path) == ["file"] and (tmp_path / "file").read_text() == "keep"


def test_write_json_atomic_removes_its_temp_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.json"
    path.write_text("old")

    def replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts.os, "replace", replace)
    with pytest.raises(PhasecodeError, match="No space left on device"):
        artifacts.write_json_atomic(path, {"x": 1})
    assert _other_files(tmp_path) == ["r.json"] and path.read_text() == "old"


def test_write_json_atomic_removes_its_temp_file_on_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts.os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        artifacts.write_json_atomic(tmp_path / "r.json", {"x": 1})
    assert _other_files(tmp_path) == []


def test_write_json_atomic_unserialisable_data_touches_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        artifacts.write_json_atomic(tmp_path / "new" / "r.json", {"x": object()})
    assert _other_files(tmp_path) == []
