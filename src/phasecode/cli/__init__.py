"""Command-line interface: one module per command, each with ``add_arguments`` and ``run``;
shared option groups in ``options``. Every argument is checked before a model loads, and
every user error is one line on stderr with exit code 2."""

from __future__ import annotations

import argparse
import sys

from phasecode.cache.root import cache_dir
from phasecode.cli import (
    cache,
    compare,
    convert,
    energy,
    evaluate,
    generate,
    neurons,
    pareto,
    report,
    run,
    simulate,
)
from phasecode.errors import PhasecodeError

COMMANDS = {
    "neurons": neurons,
    "convert": convert,
    "eval": evaluate,
    "run": run,
    "compare": compare,
    "pareto": pareto,
    "simulate": simulate,
    "energy": energy,
    "generate": generate,
    "report": report,
    "cache": cache,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phasecode",
        description="Spiking LLMs by ANN-to-SNN conversion with multi-granularity phase coding.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_arguments(sub.add_parser(name, parents=[common], help=module.HELP))
    return parser


def explicit_options(argv: list[str] | None) -> set[str]:
    """The dests of the options typed on the command line (not left at their defaults), so
    that they can override a recipe file."""
    parser = build_parser()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            if action.dest != "command":
                action.default = argparse.SUPPRESS
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return set(vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.explicit = explicit_options(argv)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        cache_dir()  # a cache root that is a file is refused before any work
        return COMMANDS[args.command].run(args)
    except PhasecodeError as err:
        print(f"phasecode: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phasecode: interrupted", file=sys.stderr)
        return 130
