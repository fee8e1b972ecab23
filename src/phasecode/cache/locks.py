"""File locks around builds that are costly or large (a GGUF's dequantized copy, a compiled
kernel, an ANN's scores): a second process waits, says so, and then reads what the first
built instead of building it again."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from phasecode.cache.root import writable


@contextlib.contextmanager
def building(target: Path, what: str) -> Iterator[None]:
    """Hold ``target``'s lock (``<target>.lock`` beside it) for the block; if another process
    holds it, print once that this one waits for it. Without a writable cache there is
    nothing to share, and no lock."""
    if not writable():
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(target)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(
            f"phasecode: waiting for another process building {what} ({lock_path(target)})",
            file=sys.stderr,
            flush=True,
        )
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def is_busy(target: Path) -> bool:
    """Whether another process holds ``target``'s lock now (its build is in progress)."""
    lock = FileLock(str(lock_path(target)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False
