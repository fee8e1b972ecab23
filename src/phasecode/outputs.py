"""Check every output path before any work, and never lose finished results at the end.

A conversion can take hours; finding out afterwards that `--out` is a file, a stranger's
directory or on a read-only mount throws that work away. The CLI calls `check_output_file` /
`check_artifact_dir` first, and `write_json_or_print` last so that a write that still fails
leaves the results on stdout instead of nowhere. The checks create nothing that outlives them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from phasecode.artifacts import (
    NEURONS_KIND,
    SPIKING_MODEL_KIND,
    read_artifact_header,
    write_json_atomic,
)
from phasecode.errors import PhasecodeError

# How each artifact kind is named in messages ("DIR already holds a converted model").
KIND_NAMES = {SPIKING_MODEL_KIND: "a converted model", NEURONS_KIND: "a neurons artifact"}


def _kind_name(kind: object) -> str:
    """Words for an artifact kind in a message; unknown kinds are quoted as found."""
    known = KIND_NAMES.get(kind) if isinstance(kind, str) else None
    return known or f"an artifact of kind {kind!r}"


def _nearest_existing(path: Path, shown: Path) -> Path:
    """The closest of `path` and its ancestors that exists; it must be a directory (else the
    missing parts can never be created under it)."""
    for candidate in (path, *path.parents):
        try:
            os.stat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue  # a missing part, or a part under a file (found on the way up)
        except OSError as e:
            raise PhasecodeError(
                f"cannot use {shown}: cannot inspect {candidate} ({e.strerror or e})"
            ) from None
        if not candidate.is_dir():
            raise PhasecodeError(f"cannot create {shown}: {candidate} is not a directory")
        return candidate
    raise PhasecodeError(f"cannot use {shown}: no part of it exists")  # pragma: no cover


def _probe_writable(directory: Path, shown: Path) -> None:
    """Create and remove a file in `directory`: os.access says yes to root on read-only or
    virtual filesystems (/proc), so only trying tells the truth."""
    probe = directory / f".phasecode-probe-{secrets.token_hex(6)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise PhasecodeError(
            f"cannot write {shown}: {directory} is not writable ({e.strerror or e})"
        ) from None
    os.close(fd)
    probe.unlink(missing_ok=True)


def check_output_file(path: Path) -> Path:
    """Check that a results file (`--json FILE`) can be written later; return it resolved.

    Refuses a directory, something that is not a regular file (a device would be replaced by
    the atomic rename), a parent that is a file, and an unwritable location. Missing parent
    directories are not created here; `write_json_atomic` creates them at the end.
    """
    shown = Path(path)
    target = shown.expanduser().resolve()
    if target.is_dir():
        raise PhasecodeError(f"cannot write {shown}: it is a directory; give a file name")
    if os.path.lexists(target) and not target.is_file():
        raise PhasecodeError(f"cannot write {shown}: it exists and is not a regular file")
    _probe_writable(_nearest_existing(target.parent, shown), shown)
    return target


def _is_own_leftover(entry: str, name: str) -> bool:
    """Temporaries a killed save_artifact / write_json_atomic / probe may leave behind."""
    return entry.startswith((f".{name}.tmp-", ".phasecode-probe-"))


def check_artifact_dir(path: Path, kind: str, force: bool, *, name: str = "neurons") -> Path:
    """Check that an artifact of `kind` may be saved in `path` (`--out DIR`); return it resolved.

    Accepted: a missing directory (under a writable one), an empty directory, or a directory
    holding an artifact of the same kind when `force` (only `<name>.safetensors` and
    `<name>.json` are then replaced; the user's other files there are kept). Everything else is
    refused before any work, and nothing is created.
    """
    shown = Path(path)
    target = shown.expanduser().resolve()
    if not target.exists():
        if os.path.lexists(target):
            raise PhasecodeError(f"cannot use {shown}: it is a broken symbolic link")
        _probe_writable(_nearest_existing(target, shown), shown)
        check_free_space(target)
        return target
    if not target.is_dir():
        raise PhasecodeError(f"cannot use {shown} as an output directory: it is a file")
    try:
        entries = [e for e in os.listdir(target) if not _is_own_leftover(e, name)]
    except OSError as e:
        raise PhasecodeError(f"cannot use {shown}: cannot list it ({e.strerror})") from None
    try:
        header = read_artifact_header(target, name)
    except PhasecodeError:
        raise PhasecodeError(
            f"{shown} holds a {name}.json that is not a phasecode artifact; choose a new directory"
        ) from None
    if header is None:
        if entries:
            raise PhasecodeError(
                f"{shown} is not empty and holds no phasecode artifact; choose a new directory"
            )
    else:
        found = header.get("kind")
        if found != kind:
            raise PhasecodeError(
                f"{shown} already holds {_kind_name(found)}, not {_kind_name(kind)}; "
                "choose a new directory"
            )
        if not force:
            raise PhasecodeError(
                f"{shown} already holds {_kind_name(kind)}; pass --force to overwrite it"
            )
        tensors = target / f"{name}.safetensors"
        if os.path.lexists(tensors) and not tensors.is_file():
            raise PhasecodeError(f"cannot overwrite {shown}: {tensors.name} is not a file")
    _probe_writable(target, shown)
    check_free_space(target)
    return target


def write_json_or_print(path: Path, data: dict, *, stream: TextIO | None = None) -> None:
    """Write `data` to `path`; if that fails, print it to `stream` (stdout) and raise one line
    saying where the results went, so a late failure never loses the results."""
    try:
        write_json_atomic(path, data)
    except PhasecodeError as e:
        out = sys.stdout if stream is None else stream
        out.write(json.dumps(data, indent=2, default=str) + "\n")
        out.flush()
        reason = str(e).removeprefix(f"cannot write {path}: ")
        raise PhasecodeError(
            f"could not write {path} ({reason}); the results were printed above"
        ) from None


OWNER_MARKER = ".phasecode-output"  # in a directory phasecode writes reports or tables into
MIN_FREE_BYTES = 64 << 20  # free space a conversion needs for its artifact, checked up front


def check_owned_dir(path: Path, files: tuple[str, ...], what: str, ours: bool = False) -> Path:
    """Check that ``what`` (a report, a comparison) may write ``files`` into ``path``: a missing
    or empty directory, one phasecode wrote them into before (its marker, or ``ours``), or one
    holding none of them. A file of the user's with one of those names is never overwritten."""
    shown = Path(path)
    target = shown.expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise PhasecodeError(f"--out {shown} is a file; give a directory for the {what}")
    if target.is_dir() and not ours and not (target / OWNER_MARKER).exists():
        theirs = [name for name in files if os.path.lexists(target / name)]
        if theirs:
            raise PhasecodeError(
                f"{shown} holds {theirs[0]}, which phasecode did not write: choose another "
                f"directory for the {what}"
            )
    _probe_writable(_nearest_existing(target, shown), shown)
    return target


def claim_dir(path: Path) -> None:
    """Create ``path`` and mark it as phasecode's output (``check_owned_dir``)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / OWNER_MARKER).touch()


def check_free_space(path: Path, needed: int = MIN_FREE_BYTES) -> None:
    """Refuse, before any work, an output whose file system has less than ``needed`` free."""
    shown = Path(path)
    where = _nearest_existing(shown.expanduser().resolve(), shown)
    free = shutil.disk_usage(where).free
    if free < needed:
        raise PhasecodeError(
            f"cannot write {shown}: only {free >> 20} MiB free on its file system, and the "
            f"output needs about {needed >> 20} MiB"
        )


@contextlib.contextmanager
def exclusive_output(path: Path) -> Iterator[None]:
    """Hold ``path`` for this process: a second phasecode process writing the same output is
    refused at once (one result would be lost) instead of both saying "saved". The lock lives
    under the cache (none there: no lock)."""
    from filelock import FileLock, Timeout

    from phasecode.cache.root import kind_dir, writable

    if not writable():
        yield
        return
    target = str(Path(path).expanduser().resolve())
    locks = kind_dir("locks")
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(locks / f"{hashlib.sha256(target.encode()).hexdigest()[:24]}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise PhasecodeError(
            f"another phasecode process is writing {path}; wait for it or choose another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()
