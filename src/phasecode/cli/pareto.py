"""`phasecode pareto`: sweep conversions of one model for the energy / perplexity front."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.cli import options
from phasecode.errors import PhasecodeError
from phasecode.outputs import check_output_file

HELP = "energy / perplexity front: neurons, T, masking and energy budgets (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    options.add_model(parser)
    parser.add_argument(
        "--timesteps", "-T", type=int, default=8, help="T of the masking and budget points"
    )
    parser.add_argument("--uniform", default="8,7,6", help="T values of the uniform-T curves")
    parser.add_argument("--masks", default="3", help="masking strengths at T, comma list")
    parser.add_argument(
        "--budgets",
        default="0.9,0.85,0.8",
        help="energy budgets (ratio to the ANN) met by a spike price at T, comma list",
    )
    parser.add_argument(
        "--knapsack-budgets",
        default="",
        help="energy budgets met by a knapsack's T per site instead, comma list",
    )
    parser.add_argument(
        "--fisher",
        default="",
        help="T values of a signed-digit curve trained on the Fisher objective (comma list)",
    )
    parser.add_argument(
        "--unbiased-probs",
        default="",
        help="T values of a signed-digit curve whose probabilities keep their mass "
        "(--probs-bias at its recommended κ), comma list",
    )
    parser.add_argument(
        "--unbiased-budgets",
        default="",
        help="energy budgets of a curve with --probs-bias at its recommended κ, comma list",
    )
    parser.add_argument("--grains", type=int, default=2, help="number of bases (grains)")
    parser.add_argument("--windows", type=int, default=40, help="WikiText-2 windows for PPL")
    parser.add_argument("--seq-len", type=int, default=512, help="PPL window length")
    parser.add_argument("--tokens", type=int, default=512, help="tokens simulated for energy")
    parser.add_argument("--costs", default="45nm-fp32", help="energy cost preset or JSON file")
    parser.add_argument("--text", default="wikitext2", help="corpus name or text file")
    options.add_sampling(parser, seq_len_option="--calib-seq-len")
    parser.add_argument("--out", type=Path, required=True, help="results directory")


def run(args: argparse.Namespace) -> int:
    from phasecode.comparison.frontier import front_points
    from phasecode.evaluation.perplexity import load_corpus
    from phasecode.jobs.pareto import PLOT, RESULTS, TABLE, pareto_job
    from phasecode.settings import EnergyBudget, FitSettings
    from phasecode.simulation.energy import load_costs

    options.positive(args, "windows", "seq_len", "tokens")
    uniform = _numbers(args.uniform, "--uniform", int)
    fisher = _numbers(args.fisher, "--fisher", int)
    unbiased = _numbers(args.unbiased_probs, "--unbiased-probs", int)
    for t in [args.timesteps, *uniform, *fisher, *unbiased]:
        FitSettings("mgpc", t, min(args.grains, t))  # validates T and grains
    masks = _numbers(args.masks, "--masks", int)
    if any(not 0 <= m < args.timesteps for m in masks):
        raise PhasecodeError(f"--masks must be in 0..T-1={args.timesteps - 1}")
    budgets = _numbers(args.budgets, "--budgets", float)
    unbiased_budgets = _numbers(args.unbiased_budgets, "--unbiased-budgets", float)
    knapsack = _numbers(args.knapsack_budgets, "--knapsack-budgets", float)
    for budget in budgets + unbiased_budgets + knapsack:
        EnergyBudget(budget)
    load_costs(args.costs)  # a bad cost file is refused before the model loads
    load_corpus(args.text)
    sampling = options.sampling_settings(args)
    where = options.placement(args)
    options.check_model(args, where)
    for name in (RESULTS, TABLE, PLOT):
        check_output_file(args.out / name)
    points = front_points(
        args.timesteps, uniform, masks, budgets, fisher, unbiased, unbiased_budgets, knapsack
    )
    pareto_job(
        args.model,
        points,
        sampling,
        args.out,
        windows=args.windows,
        seq_len=args.seq_len,
        tokens=args.tokens,
        costs=args.costs,
        text=args.text,
        grains=args.grains,
        progress=not args.quiet,
        placement=where,
    )
    print(f"front written to {args.out / TABLE} and {args.out / PLOT}")
    return 0


def _numbers(text: str, option: str, kind: type) -> list:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise PhasecodeError(f"{option} must be a comma list of numbers, got {text!r}") from error
