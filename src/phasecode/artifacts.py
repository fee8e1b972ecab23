"""Trained artifacts on disk: a directory holding `<name>.safetensors` plus `<name>.json`.

The JSON is the commit record: it carries the sha256 of the tensor file and is moved into
place last, so a reader either sees a complete artifact or detects the mismatch and refuses.
It also carries `metadata_sha256`, a checksum of its own content (all but the informational
`UNPROTECTED_KEYS`), so an edited spec, site list or allocation is refused rather than silently
applied to tensors it does not describe.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from phasecode.errors import PhasecodeError

# 2: adds `metadata_sha256`. Format 1 is refused (see `load_artifact`).
FORMAT_VERSION = 2

# Informational keys a user may edit (or a tool may annotate) without invalidating the artifact:
# none of them changes what the loaded model computes. Everything else is checksummed.
UNPROTECTED_KEYS: tuple[str, ...] = ("created", "report")
METADATA_CHECKSUM_KEY = "metadata_sha256"

# what an artifact directory holds (its metadata's "kind"): a converted model, or the neurons
# alone (`phasecode neurons --out`)
SPIKING_MODEL_KIND = "spiking-model"
NEURONS_KIND = "neurons"


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


def metadata_checksum(metadata: dict) -> str:
    """sha256 of the canonical JSON of `metadata` without the unprotected keys and itself.

    Canonical (sorted keys, no whitespace) so re-indenting or reordering the file by hand is not
    an edit; `metadata` must already be JSON-plain (as read back from disk).
    """
    protected = {
        k: v
        for k, v in metadata.items()
        if k not in UNPROTECTED_KEYS and k != METADATA_CHECKSUM_KEY
    }
    text = json.dumps(protected, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _describe_os_error(error: OSError) -> str:
    """The reason without Python's `[Errno n]` noise, for a one-line user message."""
    return error.strerror or str(error)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON atomically (``write_text_atomic``), serialised before touching the disk."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file and a rename, so a crash never leaves half a file.

    The temporary file has a unique name in the same directory (same filesystem, so the rename
    is atomic) and is removed on any failure; every OS failure is one PhasecodeError.
    """
    path = Path(path)
    if path.is_dir():
        raise PhasecodeError(f"cannot write {path}: it is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PhasecodeError(
            f"cannot write {path}: cannot create {path.parent}: {_describe_os_error(e)}"
        ) from None
    tmp: Path | None = None
    try:
        # O_EXCL with a random name instead of mkstemp: the file gets the umask's permissions
        # (mkstemp's 0600 would survive the rename and hide the results from other users).
        while tmp is None:
            candidate = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            tmp = candidate
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise PhasecodeError(f"cannot write {path}: {_describe_os_error(e)}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write (a figure, say), renamed onto
    ``path`` when the block succeeds and removed when it fails: a kill or a full disk never
    leaves a cut-off file under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise PhasecodeError(f"cannot write {path}: {_describe_os_error(e)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def artifact_id(directory: str | Path, name: str = "neurons") -> str | None:
    """What identifies an artifact's content: its metadata checksum (None: no artifact)."""
    header = read_artifact_header(directory, name)
    return None if header is None else header.get(METADATA_CHECKSUM_KEY)


def artifact_exists(directory: str | Path, name: str = "neurons") -> bool:
    """True if the commit file is present (it is written last, so it marks a whole artifact)."""
    return (Path(directory) / f"{name}.json").is_file()


def read_artifact_header(directory: str | Path, name: str = "neurons") -> dict | None:
    """The unverified JSON of the artifact in `directory`, or None if there is no `<name>.json`.

    For deciding whether a directory may be written to (its `kind`, its existence), not for
    loading: a `<name>.json` that is not a phasecode artifact's is a PhasecodeError, so nobody
    overwrites a user's file of that name.
    """
    _check_name(name)
    directory = Path(directory)
    json_path = directory / f"{name}.json"
    if not os.path.lexists(json_path):
        return None
    foreign = f"{json_path} exists but is not a phasecode artifact; choose a new directory"
    if not json_path.is_file():
        raise PhasecodeError(foreign)
    try:
        metadata = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise PhasecodeError(foreign) from None
    if not isinstance(metadata, dict) or type(metadata.get("format_version")) is not int:
        raise PhasecodeError(foreign)
    return metadata


def save_artifact(
    directory: str | Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict,
    *,
    name: str = "neurons",
    overwrite: bool = True,
) -> Path:
    """Write tensors and metadata atomically; only `<name>.safetensors` and `<name>.json` are
    replaced, every other file in `directory` is left alone.

    `format_version`, `sha256`, `created` and `metadata_sha256` are (re)computed here,
    overriding any in `metadata`. A `<name>.json` that is not an artifact's is never overwritten.
    """
    _check_name(name)
    directory = Path(directory)
    try:  # fail before touching the disk; the round trip is what a reader will see
        plain = json.loads(json.dumps(metadata, allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise PhasecodeError(f"artifact metadata is not JSON-serialisable: {e}") from None
    if not isinstance(plain, dict):
        raise PhasecodeError("artifact metadata must be a JSON object")
    if read_artifact_header(directory, name) is not None and not overwrite:
        raise PhasecodeError(f"artifact already exists: {directory} (refusing to overwrite)")
    st_path = directory / f"{name}.safetensors"
    if os.path.lexists(st_path) and not st_path.is_file():
        raise PhasecodeError(f"{st_path} exists but is not a file; refusing to replace it")

    blob = safetensors.torch.save(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    )
    record = {
        **plain,
        "format_version": FORMAT_VERSION,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record[METADATA_CHECKSUM_KEY] = metadata_checksum(record)
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


ArtifactCheck = Callable[[dict[str, torch.Tensor], dict], None]


def load_artifact(
    directory: str | Path,
    *,
    name: str = "neurons",
    expected_fingerprint: str | None = None,
    check: ArtifactCheck | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and verify an artifact; every way it can be wrong is one clear PhasecodeError.

    `check(tensors, metadata)` runs last, on verified data, for consistency rules only the
    caller knows (a spec's T against the table's shape): it raises ValueError, KeyError or
    TypeError naming the disagreement, reported here as a corrupt artifact.
    """
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
    if version < FORMAT_VERSION:
        raise PhasecodeError(
            f"artifact {directory} uses the old format {version}, whose metadata is not "
            f"checksummed; re-run `phasecode convert` (or `phasecode neurons --out`) to rebuild it"
        )
    try:
        intact = metadata.get(METADATA_CHECKSUM_KEY) == metadata_checksum(metadata)
    except ValueError:  # NaN/Infinity literals: never written by save_artifact
        intact = False
    if not intact:
        raise PhasecodeError(
            f"corrupt artifact: the metadata in {json_path} was edited or is corrupt "
            f"(its checksum does not match); re-run the command that made it"
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
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if check is not None:
        try:
            check(tensors, metadata)
        except (ValueError, KeyError, TypeError) as e:
            raise PhasecodeError(
                f"corrupt artifact: {directory}: its metadata disagrees with its tensors: {e}"
            ) from None
    return tensors, metadata
