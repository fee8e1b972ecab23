"""`phasecode convert`: a base model → a spiking-model artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.cli import options
from phasecode.errors import PhasecodeError
from phasecode.outputs import check_artifact_dir
from phasecode.settings import BUDGET_MODES, EnergyBudget, FitSettings

HELP = "convert a model into a spiking model artifact"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_conversion(parser)
    parser.add_argument("--no-rotate", action="store_true", help="no Hadamard rotations")
    options.add_prefix(parser)
    parser.add_argument("--no-lm-head", action="store_true", help="keep the lm_head input analog")
    parser.add_argument(
        "--balance", action="store_true", help="balance the SiLU·up operands per channel"
    )
    parser.add_argument(
        "--energy-budget",
        type=float,
        metavar="RATIO",
        help="stop at this predicted total energy ratio to the ANN; how: --budget-mode",
    )
    parser.add_argument(
        "--budget-mode",
        choices=BUDGET_MODES,
        default=EnergyBudget.mode,
        help="price: every site at T, training raises the price of a spike (weighted by each "
        "site's loss sensitivity) until the budget is met; knapsack: T per site chosen before "
        "training from untrained neurons, spikes priced at its price",
    )
    parser.add_argument(
        "--min-timesteps",
        type=int,
        default=EnergyBudget.min_timesteps,
        help="the fewest timesteps --budget-mode knapsack may give a site",
    )
    parser.add_argument(
        "--costs",
        default=EnergyBudget.costs,
        help="energy costs for --energy-budget: a preset (45nm-fp32, 45nm-fp16, 45nm-int8) "
        "or a JSON file",
    )
    parser.add_argument("--out", type=Path, required=True, help="artifact directory")
    parser.add_argument("--force", action="store_true", help="overwrite an artifact in --out")


def run(args: argparse.Namespace) -> int:
    from phasecode.jobs.convert import convert_job

    fit = options.fit_settings(args)
    budget = energy_budget(args, fit)
    sampling = options.sampling_settings(args)
    prefix = options.prefix_request(args)
    where = options.placement(args)
    options.check_model(args, where)
    check_artifact_dir(args.out, "spiking-model", args.force)
    convert_job(
        args.model,
        fit,
        sampling,
        args.out,
        rotate=not args.no_rotate,
        prefix=prefix,
        lm_head=not args.no_lm_head,
        progress=not args.quiet,
        balance=args.balance,
        weight_bits=args.weight_bits,
        placement=where,
        budget=budget,
    )
    return 0


def energy_budget(args: argparse.Namespace, fit: FitSettings) -> EnergyBudget | None:
    """The checked --energy-budget settings (None without the option)."""
    from phasecode.simulation.energy import load_costs

    if args.energy_budget is None:
        return None
    if fit.method != "mgpc":
        raise PhasecodeError("--energy-budget trains its neurons: it needs --method mgpc")
    if not 1 <= args.min_timesteps <= fit.timesteps:
        raise PhasecodeError(
            f"--min-timesteps must be in 1..T={fit.timesteps}, got {args.min_timesteps}"
        )
    load_costs(args.costs)  # a bad cost file is refused before the model loads
    return EnergyBudget(
        args.energy_budget, args.min_timesteps, costs=args.costs, mode=args.budget_mode
    )
