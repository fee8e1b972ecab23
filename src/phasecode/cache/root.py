"""Where phasecode's cache lives, and what happens when it cannot be used.

$PHASECODE_CACHE (default ~/.cache/phasecode) holds one folder per kind of remembered thing
(``kinds.KINDS``). A root that is a file is a user error; a root that cannot be written
(read-only, full) costs only time: phasecode warns once and works uncached.
"""

from __future__ import annotations

import os
import secrets
import sys
from functools import cache
from pathlib import Path

from phasecode.errors import PhasecodeError

ENV = "PHASECODE_CACHE"
DEFAULT_ROOT = "~/.cache/phasecode"


def cache_dir() -> Path:
    """The cache root: $PHASECODE_CACHE, else ~/.cache/phasecode (refused if it is a file)."""
    root = Path(os.environ.get(ENV) or DEFAULT_ROOT).expanduser()
    if root.exists() and not root.is_dir():
        raise PhasecodeError(
            f"the cache root {root} is a file, not a directory: point ${ENV} at a directory "
            f"(unset, it is {DEFAULT_ROOT})"
        )
    return root


def kind_dir(kind: str) -> Path:
    return cache_dir() / kind


def writable() -> bool:
    """Whether the cache root can be written; the first time it cannot, one warning on stderr
    says that phasecode works uncached."""
    return _probe(str(cache_dir()))


@cache
def _probe(root: str) -> bool:
    path = Path(root)
    probe = path / f".probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        print(
            f"phasecode: warning: the cache {path} cannot be written ({reason}); working "
            f"uncached (set ${ENV} to a writable directory to keep results across runs)",
            file=sys.stderr,
        )
        return False
    return True
