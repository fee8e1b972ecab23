"""`phasecode cache ls|du|clear|prune`: see and bound what phasecode remembers."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.outputs import check_output_file

HELP = "list, measure, clear or bound phasecode's cache ($PHASECODE_CACHE)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from phasecode.cache.inventory import KINDS

    kinds = ", ".join(KINDS)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ls|du|clear|prune")
    listing = actions.add_parser("ls", help="every entry: kind, size, last use, what it is for")
    listing.add_argument("kinds", nargs="*", metavar="KIND", help=f"only these ({kinds})")
    listing.add_argument("--json", type=Path, help="also write the entries, with their inputs")
    actions.add_parser("du", help="bytes and entries per kind")
    clearing = actions.add_parser("clear", help="remove every entry (of the kinds given)")
    clearing.add_argument("kinds", nargs="*", metavar="KIND", help=f"only these ({kinds})")
    pruning = actions.add_parser("prune", help="remove the least recently used entries")
    pruning.add_argument(
        "--max-size", required=True, help="what the cache may keep, e.g. 20G or 500M"
    )


def run(args: argparse.Namespace) -> int:
    from phasecode.cache.inventory import check_kinds, parse_size
    from phasecode.cache.root import cache_dir
    from phasecode.jobs.cache import clear_job, du_job, ls_job, prune_job

    cache_dir()  # a root that is a file is refused here
    kinds = check_kinds(getattr(args, "kinds", None) or []) or None
    if args.action == "ls":
        if args.json is not None:
            check_output_file(args.json)
        ls_job(kinds, args.json)
    elif args.action == "du":
        du_job()
    elif args.action == "clear":
        clear_job(kinds)
    else:
        prune_job(parse_size(args.max_size))
    return 0
