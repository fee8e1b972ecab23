"""`phasecode report DIR`: the conversion in figures — report.md, its PNGs and report.html."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.errors import PhasecodeError
from phasecode.outputs import check_output_file, check_owned_dir

HELP = "figures and tables of a converted model: report.md, PNGs and a self-contained HTML"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--energy", type=Path, help="an `energy --json` file of this artifact")
    parser.add_argument("--compare", type=Path, help="a `compare --out` directory")
    parser.add_argument("--eval", type=Path, help="an `eval --json` file of this artifact")
    parser.add_argument("--out", type=Path, help="output directory (default: DIR/report)")


REPORT_FILES = ("report.md", "report.html", "eval.json")


def output_dir(artifact: Path, out: Path | None) -> Path:
    """The report's directory, checked before any figure is drawn: writable, and holding no
    report.md / report.html of the user's (the artifact's own report/ is phasecode's)."""
    default = artifact / "report"
    out = out if out is not None else default
    check_owned_dir(out, REPORT_FILES, "report", ours=out == default)
    for name in ("report.md", "report.html"):
        check_output_file(out / name)
    return out


def report_with_evaluation(artifact: Path, evaluation: dict, out: Path) -> Path:
    """The report of an artifact just evaluated: the evaluation is saved beside the report
    (``eval.json``) and summarised in it. Prints and returns report.md's path."""
    from phasecode.artifacts import write_json_atomic
    from phasecode.reporting.report import write_report

    write_json_atomic(out / "eval.json", evaluation)
    markdown = write_report(artifact, out, eval_json=out / "eval.json")
    print(f"report: {markdown} and {markdown.with_suffix('.html')}")
    return markdown


def check_belongs(path: Path, artifact: Path, option: str) -> None:
    """A results JSON given to the report must be this artifact's (by its content id, or for
    files written before ids, by its path), so no other model's numbers are shown."""
    import json

    from phasecode.artifacts import artifact_id

    if not path.is_file():
        raise PhasecodeError(f"{option} {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PhasecodeError(f"{option} {path}: not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise PhasecodeError(f"{option} {path}: not a phasecode results file")
    expected, found = artifact_id(artifact), data.get("artifact_id")
    if found is not None:
        same = found == expected
    else:
        named = data.get("artifact")
        same = named is not None and Path(named).expanduser().resolve() == artifact.resolve()
    if not same:
        raise PhasecodeError(
            f"{option} {path} holds the results of another artifact "
            f"({data.get('artifact', 'unnamed')}), not of {artifact}"
        )


def run(args: argparse.Namespace) -> int:
    from phasecode.reporting.report import write_report

    for option in ("energy", "eval"):
        path = getattr(args, option)
        if path is not None:
            check_belongs(path, args.artifact, f"--{option}")
    out = output_dir(args.artifact, args.out)
    markdown = write_report(args.artifact, out, args.energy, args.compare, args.eval)
    print(f"report: {markdown} and {markdown.with_suffix('.html')}")
    return 0
