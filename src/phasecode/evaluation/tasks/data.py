"""Read the staged zero-shot sets in their original release formats.

Each reader returns the documents in the schema of the Hugging Face dataset that
lm-evaluation-harness's built-in task loads, so that the task configs in ``configs/`` build
exactly the prompts of the built-in ``arc_easy``, ``arc_challenge``, ``piqa`` and
``winogrande``. Any deviation from the expected format is a PhasecodeError naming the file and
the format, because a silently skipped row would change the accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phasecode.calibration.text import data_dir
from phasecode.errors import PhasecodeError

ARC_FORMAT = (
    'one JSON object per line: {"id", "question": {"stem", "choices": [{"text", "label"}, ...]}, '
    '"answerKey"} with answerKey among the labels'
)
TASK_CONFIGS = Path(__file__).parent / "configs"  # the lm-eval task YAMLs reading these files
PIQA_FORMAT = 'one JSON object per line {"goal", "sol1", "sol2"}, and a label file of 0/1 per line'
WINOGRANDE_FORMAT = (
    'one JSON object per line {"sentence" with exactly one "_", "option1", "option2"}, and a label '
    "file of 1/2 per line"
)


@dataclass(frozen=True)
class TaskSource:
    """Where a task's documents live under the data dir, and how to read them."""

    files: tuple[str, ...]  # relative to data_dir()
    split: str  # the split lm-eval's built-in task evaluates
    reader: Callable[..., list[dict[str, Any]]]

    def paths(self) -> list[Path]:
        root = data_dir()
        return [root / name for name in self.files]

    def read(self) -> list[dict[str, Any]]:
        """The documents, or a PhasecodeError naming the missing or malformed file."""
        paths = self.paths()
        for path in paths:
            if not path.is_file():
                raise PhasecodeError(f"task data file not found: {path}")
        return self.reader(*paths)


def read_arc(path: Path) -> list[dict[str, Any]]:
    """ARC's release JSONL → HF ``allenai/ai2_arc`` rows (question flattened to its stem)."""
    docs = []
    for line_no, row in _jsonl(path, ARC_FORMAT):
        try:
            question = row["question"]
            choices = question["choices"]
            doc = {
                "id": str(row["id"]),
                "question": _text(question["stem"]),
                "choices": {
                    "text": [_text(c["text"]) for c in choices],
                    "label": [_text(c["label"]) for c in choices],
                },
                "answerKey": _text(row["answerKey"]),
            }
        except (KeyError, TypeError) as exc:
            raise _format_error(path, line_no, ARC_FORMAT, exc) from None
        if len(choices) < 2 or doc["answerKey"] not in doc["choices"]["label"]:
            raise _format_error(path, line_no, ARC_FORMAT, "answerKey is not one of the labels")
        docs.append(doc)
    return _nonempty(docs, path, ARC_FORMAT)


def read_piqa(path: Path, labels_path: Path) -> list[dict[str, Any]]:
    """PIQA's ``dev.jsonl`` + ``dev-labels.lst`` → HF ``piqa`` rows (label 0 = sol1)."""
    rows = _jsonl(path, PIQA_FORMAT)
    labels = _labels(labels_path, {"0": 0, "1": 1}, len(rows), PIQA_FORMAT)
    docs = []
    for (line_no, row), label in zip(rows, labels, strict=True):
        try:
            doc = {key: _text(row[key]) for key in ("goal", "sol1", "sol2")}
        except (KeyError, TypeError) as exc:
            raise _format_error(path, line_no, PIQA_FORMAT, exc) from None
        docs.append({**doc, "label": label})
    return _nonempty(docs, path, PIQA_FORMAT)


def read_winogrande(path: Path, labels_path: Path) -> list[dict[str, Any]]:
    """WinoGrande's ``dev.jsonl`` + ``dev-labels.lst`` → HF ``winogrande`` rows (answer "1"/"2").

    The label file is the answer; a row's own "answer" field, where present, must agree.
    """
    rows = _jsonl(path, WINOGRANDE_FORMAT)
    labels = _labels(labels_path, {"1": "1", "2": "2"}, len(rows), WINOGRANDE_FORMAT)
    docs = []
    for (line_no, row), label in zip(rows, labels, strict=True):
        try:
            doc = {key: _text(row[key]) for key in ("sentence", "option1", "option2")}
        except (KeyError, TypeError) as exc:
            raise _format_error(path, line_no, WINOGRANDE_FORMAT, exc) from None
        if doc["sentence"].count("_") != 1:
            raise _format_error(path, line_no, WINOGRANDE_FORMAT, 'no single "_" blank')
        if str(row.get("answer", label)) != label:
            raise _format_error(path, line_no, WINOGRANDE_FORMAT, "answer disagrees with labels")
        docs.append({**doc, "answer": label})
    return _nonempty(docs, path, WINOGRANDE_FORMAT)


SOURCES: dict[str, TaskSource] = {
    "arc_easy": TaskSource(("arc/ARC-Easy-Test.jsonl",), "test", read_arc),
    "arc_challenge": TaskSource(("arc/ARC-Challenge-Test.jsonl",), "test", read_arc),
    "piqa": TaskSource(("piqa/dev.jsonl", "piqa/dev-labels.lst"), "validation", read_piqa),
    "winogrande": TaskSource(
        ("winogrande/dev.jsonl", "winogrande/dev-labels.lst"), "validation", read_winogrande
    ),
}


def _jsonl(path: Path, expected: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; anything but a JSON object is an error."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise PhasecodeError(f"{path}: not UTF-8 text; expected {expected}") from None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _format_error(path, line_no, expected, exc.msg) from None
        if not isinstance(row, dict):
            raise _format_error(path, line_no, expected, "not a JSON object")
        rows.append((line_no, row))
    return rows


def _labels(path: Path, allowed: dict[str, Any], count: int, expected: str) -> list[Any]:
    """One label per line, as many as there are documents."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise PhasecodeError(f"{path}: not UTF-8 text; expected {expected}") from None
    lines = [line for line in lines if line]
    if len(lines) != count:
        raise PhasecodeError(
            f"{path}: {len(lines)} labels for {count} documents; expected {expected}"
        )
    bad = next((i for i, line in enumerate(lines, start=1) if line not in allowed), None)
    if bad is not None:
        raise _format_error(path, bad, expected, f"label {lines[bad - 1]!r}")
    return [allowed[line] for line in lines]


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _nonempty(docs: list[dict], path: Path, expected: str) -> list[dict]:
    if not docs:
        raise PhasecodeError(f"{path}: no documents; expected {expected}")
    return docs


def _format_error(path: Path, line_no: int, expected: str, problem: object) -> PhasecodeError:
    if isinstance(problem, KeyError):
        problem = f"missing field {problem}"
    return PhasecodeError(f"{path}:{line_no}: {problem}; expected {expected}")


def hf_dataset(task: str) -> dict[str, Any]:
    """{split: datasets.Dataset} of a task's documents, as lm-eval's ``custom_dataset`` wants."""
    import datasets

    source = SOURCES[task]
    return {source.split: datasets.Dataset.from_list(source.read())}


# lm-eval calls ``custom_dataset(**metadata)``: the task configs name these, one per task.
def arc_easy_dataset(**_: Any) -> dict[str, Any]:
    return hf_dataset("arc_easy")


def arc_challenge_dataset(**_: Any) -> dict[str, Any]:
    return hf_dataset("arc_challenge")


def piqa_dataset(**_: Any) -> dict[str, Any]:
    return hf_dataset("piqa")


def winogrande_dataset(**_: Any) -> dict[str, Any]:
    return hf_dataset("winogrande")
