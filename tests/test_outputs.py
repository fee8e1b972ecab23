"""Output paths are checked before any work, failed checks change nothing, and results that
cannot be written at the end are printed instead of lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from phasecode import outputs
from phasecode.artifacts import load_artifact, save_artifact
from phasecode.errors import PhasecodeError
from phasecode.outputs import check_artifact_dir, check_output_file, write_json_or_print

KIND = "spiking-model"


def _snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under root (and root) with its type, size and mtime: any change shows."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        found[str(path.relative_to(root))] = (path.is_dir(), st.st_size, st.st_mtime_ns)
    return found


def _refused(check, root: Path, *args: object, needle: str, shown: Path) -> str:
    """Run a check that must fail: one line naming the path, nothing under root changed."""
    before = _snapshot(root)
    with pytest.raises(PhasecodeError) as exc:
        check(*args)
    message = str(exc.value)
    assert needle in message and str(shown) in message and "\n" not in message, message
    assert _snapshot(root) == before
    return message


def _artifact(directory: Path, kind: str = KIND) -> None:
    save_artifact(directory, {"x": torch.ones(2)}, {"kind": kind, "spec": {"timesteps": 8}})


# --- check_output_file -----------------------------------------------------------------------


def _probe_fails(monkeypatch, error: OSError) -> None:
    """The writability probe's create fails with ``error``, as on a read-only mount (root
    writes through chmod, so a real unwritable directory cannot be made here)."""
    real_open = os.open

    def refuse(path, flags, *args):
        if "phasecode-probe" in str(path):
            raise error
        return real_open(path, flags, *args)

    monkeypatch.setattr(outputs.os, "open", refuse)


def test_output_file_accepts_new_and_existing_files_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text("{}")
    listing = sorted(p.name for p in tmp_path.iterdir())
    assert check_output_file(tmp_path / "old.json") == (tmp_path / "old.json").resolve()
    nested = tmp_path / "a" / "b" / "r.json"
    assert check_output_file(nested) == nested.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no parents, no probe left
    assert (tmp_path / "old.json").read_text() == "{}"


def test_output_file_relative_path_is_resolved(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_output_file(Path("r.json")) == tmp_path.resolve() / "r.json"


def test_output_file_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    _refused(
        check_output_file,
        tmp_path,
        tmp_path / "out",
        needle="is a directory",
        shown=tmp_path / "out",
    )


@pytest.mark.parametrize("below", ["r.json", "a/b/r.json"])
def test_output_file_refuses_a_path_under_a_file(tmp_path: Path, below: str) -> None:
    (tmp_path / "file").write_text("keep")
    target = tmp_path / "file" / below
    message = _refused(check_output_file, tmp_path, target, needle="not a directory", shown=target)
    assert str(tmp_path / "file") in message


def test_output_file_refuses_a_device(tmp_path: Path) -> None:
    _refused(
        check_output_file,
        tmp_path,
        Path("/dev/null"),
        needle="not a regular file",
        shown=Path("/dev/null"),
    )


@pytest.mark.parametrize("target", ["/etc/passwd/x.json", "/proc/phasecode/x.json", "/proc/x"])
def test_output_file_refuses_system_paths(tmp_path: Path, target: str) -> None:
    """Root passes os.access on /proc; only the probe (or the stat walk) catches these."""
    if target.startswith("/proc") and not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    with pytest.raises(PhasecodeError) as exc:
        check_output_file(Path(target))
    assert target in str(exc.value)
    assert not os.path.lexists(target)


def test_output_file_refuses_an_unwritable_parent(tmp_path: Path, monkeypatch) -> None:
    """Simulated (root writes through chmod): the probe's create fails as on a read-only mount."""
    _probe_fails(monkeypatch, OSError(30, "Read-only file system"))
    target = tmp_path / "r.json"
    message = _refused(check_output_file, tmp_path, target, needle="not writable", shown=target)
    assert "Read-only file system" in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_output_file_refuses_a_read_only_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        target = locked / "r.json"
        _refused(check_output_file, tmp_path, target, needle="not writable", shown=target)
    finally:
        locked.chmod(0o700)


# --- check_artifact_dir ----------------------------------------------------------------------


def test_artifact_dir_accepts_missing_and_empty_directories(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert check_artifact_dir(tmp_path / "empty", KIND, False) == (tmp_path / "empty").resolve()
    assert check_artifact_dir(tmp_path / "new" / "deep", KIND, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing created
    assert list((tmp_path / "empty").iterdir()) == []


def test_artifact_dir_ignores_its_own_leftover_temporaries(tmp_path: Path) -> None:
    (tmp_path / ".neurons.tmp-abc123").mkdir()  # a killed save_artifact
    (tmp_path / ".phasecode-probe-0a1b").write_text("")  # a killed check
    assert check_artifact_dir(tmp_path, KIND, False) == tmp_path.resolve()


def test_artifact_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("keep")
    _refused(
        check_artifact_dir,
        tmp_path,
        tmp_path / "out",
        KIND,
        True,
        needle="it is a file",
        shown=tmp_path / "out",
    )


@pytest.mark.parametrize("force", [False, True])
def test_artifact_dir_refuses_a_foreign_directory(tmp_path: Path, force: bool) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    _refused(
        check_artifact_dir,
        tmp_path,
        tmp_path,
        KIND,
        force,
        needle="is not empty and holds no phasecode artifact; choose a new directory",
        shown=tmp_path,
    )


@pytest.mark.parametrize("force", [False, True])
def test_artifact_dir_refuses_another_kind(tmp_path: Path, force: bool) -> None:
    _artifact(tmp_path, kind="neurons")
    message = _refused(
        check_artifact_dir,
        tmp_path,
        tmp_path,
        KIND,
        force,
        needle="already holds a neurons",
        shown=tmp_path,
    )
    assert "not a converted model" in message and "choose a new directory" in message


def test_artifact_dir_refuses_the_same_kind_without_force(tmp_path: Path) -> None:
    _artifact(tmp_path)
    _refused(
        check_artifact_dir,
        tmp_path,
        tmp_path,
        KIND,
        False,
        needle="already holds a converted model; pass --force to overwrite it",
        shown=tmp_path,
    )
    assert check_artifact_dir(tmp_path, KIND, True) == tmp_path.resolve()


@pytest.mark.parametrize("content", ['{"kind": "spiking-model"}', "not json", "[]"])
def test_artifact_dir_refuses_a_foreign_json_even_with_force(tmp_path: Path, content) -> None:
    (tmp_path / "neurons.json").write_text(content)
    _refused(
        check_artifact_dir,
        tmp_path,
        tmp_path,
        KIND,
        True,
        needle="neurons.json that is not a phasecode artifact",
        shown=tmp_path,
    )


def test_artifact_dir_refuses_a_directory_where_the_tensors_go(tmp_path: Path) -> None:
    _artifact(tmp_path)
    (tmp_path / "neurons.safetensors").unlink()
    (tmp_path / "neurons.safetensors").mkdir()
    _refused(
        check_artifact_dir,
        tmp_path,
        tmp_path,
        KIND,
        True,
        needle="is not a file",
        shown=tmp_path,
    )


@pytest.mark.parametrize("below", ["out", "a/b/out"])
def test_artifact_dir_refuses_a_path_under_a_file(tmp_path: Path, below: str) -> None:
    (tmp_path / "file").write_text("keep")
    target = tmp_path / "file" / below
    _refused(
        check_artifact_dir, tmp_path, target, KIND, False, needle="not a directory", shown=target
    )


@pytest.mark.parametrize("target", ["/etc/passwd/x", "/proc/phasecode-out"])
def test_artifact_dir_refuses_system_paths(target: str) -> None:
    with pytest.raises(PhasecodeError) as exc:
        check_artifact_dir(Path(target), KIND, True)
    assert target in str(exc.value)
    assert not os.path.lexists(target)


def test_artifact_dir_refuses_an_unwritable_directory(tmp_path: Path, monkeypatch) -> None:
    _probe_fails(monkeypatch, PermissionError(13, "Permission denied"))
    for target in (tmp_path, tmp_path / "new"):
        _refused(
            check_artifact_dir, tmp_path, target, KIND, False, needle="not writable", shown=target
        )


def test_force_overwrite_keeps_the_users_other_files(tmp_path: Path) -> None:
    _artifact(tmp_path)
    (tmp_path / "notes.md").write_text("my notes")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_text("{}")
    check_artifact_dir(tmp_path, KIND, True)
    save_artifact(tmp_path, {"x": torch.zeros(3)}, {"kind": KIND, "spec": {"timesteps": 6}})
    assert (tmp_path / "notes.md").read_text() == "my notes"
    assert (tmp_path / "results" / "r.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "neurons.json",
        "neurons.safetensors",
        "notes.md",
        "results",
    ]
    tensors, metadata = load_artifact(tmp_path)
    assert torch.equal(tensors["x"], torch.zeros(3)) and metadata["spec"]["timesteps"] == 6


# --- write_json_or_print ---------------------------------------------------------------------


def test_write_json_or_print_writes_the_file(tmp_path: Path, capsys) -> None:
    write_json_or_print(tmp_path / "r" / "r.json", {"ppl": 12.5})
    assert json.loads((tmp_path / "r" / "r.json").read_text()) == {"ppl": 12.5}
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("make", ["directory", "under-a-file"])
def test_write_json_or_print_prints_what_it_cannot_write(tmp_path: Path, capsys, make) -> None:
    blocker = tmp_path / "blocker"
    if make == "directory":
        blocker.mkdir()
        target = blocker
    else:
        blocker.write_text("")
        target = blocker / "r.json"
    data = {"ppl": {"wikitext2": 12.5}, "sites": [1, 2]}
    before = _snapshot(tmp_path)
    with pytest.raises(PhasecodeError) as exc:
        write_json_or_print(target, data)
    message = str(exc.value)
    assert message.startswith(f"could not write {target} (")
    assert message.endswith("; the results were printed above") and "\n" not in message
    assert json.loads(capsys.readouterr().out) == data
    assert _snapshot(tmp_path) == before  # no temp file, nothing else
