"""Calibration text: find it, read it, and cut it into fixed-length token windows."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from phasecode.errors import PhasecodeError

_CALIBRATION_FILE = Path("c4") / "c4_validation_sample.jsonl"
_DOC_SEPARATOR = "\n\n"
_TOKENIZE_CHUNK = 64  # documents tokenized per call; we stop as soon as there are enough tokens


def _find_data_dir() -> Path | None:
    """The shared data dir: $PHASECODE_DATA, ../shared/data from the working dir, or a
    shared/data beside one of this file's ancestors (the repo checkout sits next to shared/)."""
    if os.environ.get("PHASECODE_DATA"):
        return Path(os.environ["PHASECODE_DATA"]).expanduser()
    candidates = [Path.cwd().parent / "shared" / "data"]
    candidates += [parent / "shared" / "data" for parent in Path(__file__).resolve().parents]
    return next((path for path in candidates if path.is_dir()), None)


def data_dir() -> Path:
    """The shared data dir, or a PhasecodeError saying how to point at it."""
    path = _find_data_dir()
    if path is None or not path.is_dir():
        where = f" ({path} is not a directory)" if path else ""
        raise PhasecodeError(f"shared data dir not found{where}: set PHASECODE_DATA to it")
    return path


# Resolved at import so it can serve as a plain default argument; when the data dir is missing
# it stays a relative path that read_texts reports as not found, with the PHASECODE_DATA hint.
DEFAULT_CALIBRATION = (_find_data_dir() or Path("shared") / "data") / _CALIBRATION_FILE


def read_texts(path: str | Path | None = None) -> list[str]:
    """Documents from a .jsonl file (its "text" field per line) or one plain text file; None:
    the bundled C4 validation sample (DEFAULT_CALIBRATION)."""
    path = DEFAULT_CALIBRATION if path is None else Path(path)
    if not path.is_file():
        hint = "; set PHASECODE_DATA to the shared data dir" if path == DEFAULT_CALIBRATION else ""
        raise PhasecodeError(f"calibration file not found: {path}{hint}")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PhasecodeError(f"{path}: not UTF-8 text (expected .jsonl or plain text)") from exc
    texts = _jsonl_texts(path, content) if path.suffix == ".jsonl" else [content]
    if not any(text.strip() for text in texts):
        raise PhasecodeError(f"{path}: no text found (expected .jsonl or plain text)")
    return texts


def _jsonl_texts(path: Path, content: str) -> list[str]:
    """The "text" string of every non-blank line."""
    texts = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            text = json.loads(line).get("text")
        except (json.JSONDecodeError, AttributeError):
            text = None
        if not isinstance(text, str):
            raise PhasecodeError(
                f'{path}:{number}: expected a JSON object with a "text" string on each line'
            )
        texts.append(text)
    return texts


def token_batches(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    n_sequences: int,
    seq_len: int,
    add_bos: bool = True,
) -> torch.LongTensor:
    """[n_sequences, seq_len] windows cut without overlap from the concatenated documents.

    With add_bos (and a tokenizer that has a BOS token) each window starts with BOS, as the
    model saw in training, and carries seq_len - 1 text tokens.
    """
    bos = tokenizer.bos_token_id if add_bos else None
    body = seq_len - (bos is not None)
    if n_sequences < 1 or body < 1:
        raise PhasecodeError(
            f"need n_sequences >= 1 and seq_len >= 2, got {n_sequences}, {seq_len}"
        )
    needed = n_sequences * body
    tokens: list[int] = []
    for ids in _tokenized_documents(tokenizer, texts):
        tokens.extend(ids)
        if len(tokens) >= needed:
            break
    if len(tokens) < needed:
        raise PhasecodeError(
            f"calibration text has {len(tokens)} tokens; {n_sequences} sequences of {seq_len} "
            f"need {needed}: use fewer or shorter sequences, or more text"
        )
    windows = torch.tensor(tokens[:needed], dtype=torch.long).view(n_sequences, body)
    if bos is not None:
        windows = torch.cat([torch.full((n_sequences, 1), bos, dtype=torch.long), windows], dim=1)
    return windows


def _tokenized_documents(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> Iterator[list[int]]:
    """Token ids of each document followed by the separator, tokenized lazily in chunks."""
    separator = tokenizer(_DOC_SEPARATOR, add_special_tokens=False)["input_ids"]
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = list(texts[start : start + _TOKENIZE_CHUNK])
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            yield ids + separator
