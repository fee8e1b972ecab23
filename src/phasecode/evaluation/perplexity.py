"""Evaluation text for perplexity, cut into windows following the GPTQ protocol.

GPTQ-style numbers join a corpus's rows with "\n\n", tokenize the result once, cut it into
windows of seq_len tokens and score each window on its own: the logits at positions 0..L-2
predict tokens 1..L-1. The ANN and the spiking model are scored on the very same windows.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from phasecode.calibration.text import data_dir, read_texts
from phasecode.errors import PhasecodeError

WIKITEXT2 = Path("wikitext2") / "wiki.test.raw"
C4 = Path("c4") / "c4_validation_sample.jsonl"
# the named corpora under the data directory; "wikitext2-valid" is text no conversion
# calibrates on (that is the C4 sample) and no benchmark tuned a setting on (that is the test
# split): a held-out check of whatever was chosen on the others
CORPORA = {
    "wikitext2": WIKITEXT2,
    "wikitext2-valid": Path("wikitext2") / "wiki.valid.raw",
    "c4": C4,
}
_ROW_SEPARATOR = "\n\n"


def load_corpus(name_or_path: str) -> str:
    """The evaluation text: one of ``CORPORA``, or a .jsonl / plain text file.

    "wikitext2" is the WikiText-2 raw test split exactly as GPTQ builds it, "wikitext2-valid"
    its validation split built the same way. "c4" joins the documents of the staged C4
    validation sample; that is C4-like text but not GPTQ's C4 protocol, which needs the first
    documents of validation shard 0 (see SOURCES.md).
    """
    if name_or_path in CORPORA:
        path = _existing(data_dir() / CORPORA[name_or_path])
        rows = wikitext_rows(path) if path.suffix == ".raw" else read_texts(path)
    else:
        rows = read_texts(_existing(Path(name_or_path).expanduser()))
    text = _ROW_SEPARATOR.join(rows)
    if not text.strip():
        raise PhasecodeError(f"corpus {name_or_path!r} has no text")
    return text


def wikitext_rows(path: Path) -> list[str]:
    """The rows HF's wikitext loader yields: one per line of the file, keeping its "\n";
    whitespace-only lines become ""."""
    with open(path, encoding="utf-8") as lines:
        return [line if line.strip() else "" for line in lines]


def _existing(path: Path) -> Path:
    """The path itself, or an error naming it (read_texts would call it a calibration file)."""
    if not path.is_file():
        raise PhasecodeError(f"corpus file not found: {path}")
    return path


def token_windows(
    tokenizer: PreTrainedTokenizerBase, text: str, seq_len: int, limit: int | None = None
) -> torch.LongTensor:
    """[n, seq_len] non-overlapping windows of the text tokenized once, the first `limit` of them.

    No special tokens are added (so no window starts with BOS unless the text does), which is
    also what lets a prefix that starts with BOS go in front of any window.
    """
    if seq_len < 2 or (limit is not None and limit < 1):
        raise PhasecodeError(f"need seq_len >= 2 and limit >= 1, got {seq_len} and {limit}")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    n = len(ids) // seq_len if limit is None else min(limit, len(ids) // seq_len)
    if n == 0:
        raise PhasecodeError(f"text has {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
