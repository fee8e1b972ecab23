"""`phasecode report DIR`: the conversion in figures — report.md, its PNGs and report.html."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.errors import PhasecodeError
from phasecode.outputs import check_output_file

HELP = "figures and tables of a converted model: report.md, PNGs and a self-contained HTML"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--energy", type=Path, help="an `energy --json` file of this artifact")
    parser.add_argument("--compare", type=Path, help="a `compare --out` directory")
    parser.add_argument("--eval", type=Path, help="an `eval --json` file of this artifact")
    parser.add_argument("--out", type=Path, help="output directory (default: DIR/report)")


def output_dir(artifact: Path, out: Path | None) -> Path:
    """The report's directory, checked writable before any figure is drawn."""
    out = out if out is not None else artifact / "report"
    if out.exists() and not out.is_dir():
        raise PhasecodeError(f"--out {out} is a file; give a directory for the report")
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


def run(args: argparse.Namespace) -> int:
    from phasecode.reporting.report import write_report

    for option in ("energy", "eval"):
        path = getattr(args, option)
        if path is not None and not path.is_file():
            raise PhasecodeError(f"--{option} {path}: no such file")
    out = output_dir(args.artifact, args.out)
    markdown = write_report(args.artifact, out, args.energy, args.compare, args.eval)
    print(f"report: {markdown} and {markdown.with_suffix('.html')}")
    return 0
