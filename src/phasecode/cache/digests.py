"""Digests the caches key their entries by: of JSON values, tensors and files.

A file's sha256 is remembered per (path, size, mtime, ctime, inode) in a small index, so a
large file (a GGUF, a model's safetensors) is read once, not at every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import suppress
from pathlib import Path

import torch

from phasecode.artifacts import write_json_atomic
from phasecode.cache.root import kind_dir, writable
from phasecode.errors import PhasecodeError

HASH_BLOCK = 8 << 20  # files are hashed in 8 MiB blocks
FILE_HASHES = "file-hashes"  # the index's kind folder
# A file whose mtime/ctime is this close to the moment it was hashed is not indexed: filesystem
# timestamps are coarse, so a write right after hashing could leave the same stamp ("racy git").
RACY_NS = 2_000_000_000


def json_digest(value: object) -> str:
    """sha256 of the canonical JSON of ``value`` (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tensor_digest(tensor: torch.Tensor) -> dict:
    """A tensor's shape, dtype and the sha256 of its bytes (token windows, scales)."""
    values = tensor.detach().to("cpu").contiguous()
    data = values.flatten().view(torch.uint8).numpy().tobytes()
    return {
        "shape": list(values.shape),
        "dtype": str(values.dtype),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, remembered per (path, size, mtime, ctime, inode)."""
    key = str(path.resolve())
    before = path.stat()
    stamp = [before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino]
    entry = _read_index().get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return str(entry["sha256"])
    started = time.time_ns()
    digest = _hash_file(path)
    after = path.stat()
    unchanged = [after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino] == stamp
    if unchanged and max(before.st_mtime_ns, before.st_ctime_ns) < started - RACY_NS:
        _remember(key, stamp, digest)
    return digest


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(HASH_BLOCK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def index_path() -> Path:
    return kind_dir(FILE_HASHES) / "index.json"


def _read_index() -> dict[str, object]:
    try:
        index = json.loads(index_path().read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def _remember(key: str, stamp: list[int], digest: str) -> None:
    """Add an index entry, dropping entries of files that are gone. Written atomically; a
    concurrent writer may win and drop this entry, which only costs a rehash later."""
    if not writable():
        return
    index = {path: entry for path, entry in _read_index().items() if os.path.exists(path)}
    index[key] = {"stamp": stamp, "sha256": digest}
    with suppress(PhasecodeError):  # a cache that cannot be written only loses the shortcut
        write_json_atomic(index_path(), index)
