"""Trained artifacts on disk: a directory holding `<name>.safetensors` plus `<name>.json`.

The JSON is the commit record: it carries the sha256 of the tensor file and is moved into
place last, so a reader either sees a complete artifact or detects the mismatch and refuses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from phasecode.errors import PhasecodeError

FORMAT_VERSION = 1


def _check_name(name: str) -> None:
    """Keep `name` a bare file stem so it can never escape the artifact directory."""
    if not name or name.startswith(".") or "/" in name or os.sep in name:
        raise PhasecodeError(f"invalid artifact name: {name!r}")


def _fsync_dir(directory: Path) -> None:
    """Make renames durable; only POSIX can open a directory for fsync."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON through a temporary file and a rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def artifact_exists(directory: str | Path, name: str = "neurons") -> bool:
    """True if the commit file is present (it is written last, so it marks a whole artifact)."""
    return (Path(directory) / f"{name}.json").is_file()


def save_artifact(
    directory: str | Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict,
    *,
    name: str = "neurons",
    overwrite: bool = True,
) -> Path:
    """Write tensors and metadata atomically; other files in `directory` are left alone.

    `format_version`, `sha256` and `created` are (re)computed here, overriding any in `metadata`.
    """
    _check_name(name)
    directory = Path(directory)
    try:  # fail before touching the disk
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise PhasecodeError(f"artifact metadata is not JSON-serialisable: {e}") from None
    if not overwrite and artifact_exists(directory, name):
        raise PhasecodeError(f"artifact already exists: {directory} (refusing to overwrite)")

    blob = safetensors.torch.save(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    )
    record = {
        **metadata,
        "format_version": FORMAT_VERSION,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"

    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=directory))  # same filesystem
    try:
        files = {f"{name}.safetensors": blob, f"{name}.json": text.encode()}
        for fname, data in files.items():
            with open(tmp / fname, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        # Tensors first, JSON (the commit) last: a crash in between leaves the old JSON whose
        # checksum no longer matches, which load_artifact reports as corrupt.
        for fname in files:
            os.replace(tmp / fname, directory / fname)
        _fsync_dir(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_artifact(
    directory: str | Path, *, name: str = "neurons", expected_fingerprint: str | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and verify an artifact; every way it can be wrong is one clear PhasecodeError."""
    _check_name(name)
    directory = Path(directory)
    json_path, st_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    if not json_path.is_file():
        raise PhasecodeError(f"not a phasecode artifact: {directory} (no {json_path.name})")
    try:
        metadata = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PhasecodeError(f"corrupt artifact: cannot read {json_path}: {e}") from None
    if not isinstance(metadata, dict):
        raise PhasecodeError(f"corrupt artifact: {json_path} is not a JSON object")

    version = metadata.get("format_version")
    if type(version) is not int or version < 1:
        raise PhasecodeError(f"corrupt artifact: unknown format_version {version!r} in {json_path}")
    if version > FORMAT_VERSION:
        raise PhasecodeError(
            f"artifact {directory} uses format {version}, this phasecode reads up to "
            f"{FORMAT_VERSION}; upgrade phasecode"
        )

    if expected_fingerprint is not None:
        base = metadata["base_model"] if isinstance(metadata.get("base_model"), dict) else {}
        found = base.get("fingerprint")
        if found != expected_fingerprint:
            raise PhasecodeError(
                f"artifact {directory} was made from base model {base.get('name', '?')} "
                f"(fingerprint {str(found)[:12]}); refusing to apply it to a different model "
                f"(fingerprint {expected_fingerprint[:12]})"
            )

    try:
        blob = st_path.read_bytes()  # one read: hash and parse exactly the same bytes
    except OSError as e:
        raise PhasecodeError(f"corrupt artifact: cannot read {st_path}: {e}") from None
    if hashlib.sha256(blob).hexdigest() != metadata.get("sha256"):
        raise PhasecodeError(f"corrupt artifact: checksum of {st_path.name} does not match")
    try:
        tensors = safetensors.torch.load(blob)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as e:
        raise PhasecodeError(f"corrupt artifact: cannot parse {st_path}: {e}") from None
    return {k: v.contiguous() for k, v in tensors.items()}, metadata
