"""Resumable results: one JSON file of records by cell id, rewritten atomically per record.

A record is ``{"status": "ok" | "failed", ...}``. A rerun skips the ids whose record is ok and
retries failed ones; records of other settings (other ids) are kept, so one results file can
collect several grids.
"""

from __future__ import annotations

import json
from pathlib import Path

from phasecode.artifacts import write_json_atomic
from phasecode.errors import PhasecodeError

FORMAT = 1


class ResultStore:
    """The records of ``path`` (empty if the file does not exist yet)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = self._read() if path.exists() else {}

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PhasecodeError(f"cannot read results file {self.path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PhasecodeError(
                f"{self.path} is not a phasecode compare results file (format {FORMAT})"
            )
        return data["records"]

    def done(self, key: str) -> bool:
        return self.records.get(key, {}).get("status") == "ok"

    def get(self, key: str, default: dict | None = None) -> dict | None:
        return self.records.get(key, default)

    def put(self, key: str, record: dict) -> None:
        self.records[key] = record
        write_json_atomic(self.path, {"format": FORMAT, "records": self.records})
