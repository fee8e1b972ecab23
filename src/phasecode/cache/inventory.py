"""What the cache holds, kind by kind, and the means to bound it (``phasecode cache``).

An entry is what can go on its own: a dequantized model's directory, a compiled kernel, a
remembered measurement, an index. Its last use is its modification time (reads touch it), and
``prune`` removes the least recently used first. An entry another process is building (its
lock is held) is never removed; temporary files and directories a killed process left are.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from phasecode.cache.locks import is_busy
from phasecode.cache.root import cache_dir
from phasecode.errors import PhasecodeError

# every kind phasecode keeps, with what its entries are for
KINDS: dict[str, str] = {
    "models": "dequantized GGUF copies (loaded instead of the GGUF)",
    "torch-compile": "compiled kernels of the fast path and of training",
    "prefix-choice": "the prefix a conversion chose for a model by measurement",
    "window-scores": "an ANN's perplexity on given windows (run, eval, energy)",
    "task-scores": "the prepared ANN's zero-shot accuracy (eval --tasks, compare)",
    "fingerprints": "model fingerprints, by the stamps of the files they were loaded from",
    "file-hashes": "sha256 of large files (GGUFs), by their stamps",
}


@dataclass
class Entry:
    kind: str
    path: Path
    size: int
    last_used: float  # seconds since the epoch
    what: str
    inputs: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "size": self.size,
            "last_used": self.last_used,
            "what": self.what,
            "inputs": self.inputs,
        }


def entries(kinds: list[str] | None = None) -> list[Entry]:
    """Every entry of ``kinds`` (None: all), oldest use first."""
    root = cache_dir()
    found: list[Entry] = []
    for kind in check_kinds(kinds) if kinds else list(KINDS):
        folder = root / kind
        if folder.is_dir():
            found.extend(_kind_entries(kind, folder))
    return sorted(found, key=lambda entry: entry.last_used)


def check_kinds(kinds: list[str]) -> list[str]:
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise PhasecodeError(
            f"unknown cache kind {', '.join(unknown)}; the kinds are {', '.join(KINDS)}"
        )
    return kinds


def remove(entry: Entry) -> bool:
    """Remove an entry unless a process is building it; whether it went."""
    if is_busy(entry.path):
        return False
    if entry.path.is_dir():
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        entry.path.unlink(missing_ok=True)
    return not entry.path.exists()


def clear(kinds: list[str] | None = None) -> tuple[list[Entry], list[Entry]]:
    """Remove every entry of ``kinds`` (None: all) and leftover temporary files: (removed,
    kept because in use)."""
    removed, kept = [], []
    for entry in entries(kinds):
        (removed if remove(entry) else kept).append(entry)
    remove_leftovers(kinds)
    return removed, kept


def prune(max_size: int) -> tuple[list[Entry], int]:
    """Remove the least recently used entries until the cache holds at most ``max_size``
    bytes: (removed, bytes left)."""
    remove_leftovers(None)
    everything = entries()
    total = sum(entry.size for entry in everything)
    removed = []
    for entry in everything:
        if total <= max_size:
            break
        if remove(entry):
            total -= entry.size
            removed.append(entry)
    return removed, total


def remove_leftovers(kinds: list[str] | None) -> list[Path]:
    """Temporary files and directories (``.*.tmp*``) of builds that are not running."""
    root, removed = cache_dir(), []
    for kind in kinds or list(KINDS):
        folder = root / kind
        if not folder.is_dir():
            continue
        for leftover in folder.rglob(".*.tmp*"):
            target = leftover.with_name(leftover.name[1:].split(".tmp")[0])
            if is_busy(target):
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def usage() -> dict[str, dict]:
    """Per kind: entries and bytes."""
    totals = {kind: {"entries": 0, "bytes": 0} for kind in KINDS}
    for entry in entries():
        totals[entry.kind]["entries"] += 1
        totals[entry.kind]["bytes"] += entry.size
    return totals


def _kind_entries(kind: str, folder: Path) -> list[Entry]:
    if kind == "models":
        visible = [path for path in folder.iterdir() if _visible(path)]
        return [_model_copy(p) if p.is_dir() else _file_entry(kind, p) for p in visible]
    if kind == "torch-compile":
        return _kernels(folder)
    return [
        _file_entry(kind, path) for path in folder.rglob("*") if _visible(path) and path.is_file()
    ]


def _model_copy(path: Path) -> Entry:
    try:
        record = json.loads((path / "phasecode-source.json").read_text())
        what = f"{Path(record['gguf']).name} in {record['dtype']}"
        inputs = {k: v for k, v in record.items() if k != "files"}
    except (OSError, ValueError, KeyError, TypeError):
        what, inputs = "an incomplete copy (rebuilt on next use)", {}
    return Entry("models", path, tree_size(path), path.stat().st_mtime, what, inputs)


def _kernels(folder: Path) -> list[Entry]:
    found = []
    aot = folder / "aot"
    if aot.is_dir():
        for path in aot.iterdir():
            if _visible(path) and path.is_file():
                name = path.stem.rsplit("-", 1)[0]
                stat = path.stat()
                found.append(Entry("torch-compile", path, stat.st_size, stat.st_mtime, name))
    for path in folder.iterdir():  # inductor's own caches: one entry per folder
        if path != aot and _visible(path):
            used = max((p.stat().st_mtime for p in path.rglob("*")), default=path.stat().st_mtime)
            found.append(
                Entry("torch-compile", path, tree_size(path), used, f"inductor {path.name}")
            )
    return found


def _file_entry(kind: str, path: Path) -> Entry:
    stat = path.stat()
    what, inputs = KINDS[kind], {}
    if path.suffix == ".json" and kind not in ("fingerprints", "file-hashes"):
        try:
            stored = json.loads(path.read_text())
            what = stored.get("purpose", what)
            inputs = stored.get("inputs", {})
        except (OSError, ValueError, AttributeError):
            what = "an unreadable entry (measured again on next use)"
    return Entry(kind, path, stat.st_size, stat.st_mtime, what, inputs)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def age(seconds_since_epoch: float) -> str:
    """How long ago, in the largest whole unit."""
    seconds = max(0.0, time.time() - seconds_since_epoch)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{int(seconds // length)} {unit}"
    return f"{int(seconds)} s"


def human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def parse_size(text: str) -> int:
    """Bytes from "20G", "500M", "1.5T" or a plain count (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in units else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        number = -1.0
    if not math.isfinite(number) or number < 0:
        raise PhasecodeError(f"not a size: {text!r} (write e.g. 20G, 500M or a byte count)")
    return int(number * units[unit])
