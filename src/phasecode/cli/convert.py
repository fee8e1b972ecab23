"""`phasecode convert`: a base model → a spiking-model artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.artifacts import SPIKING_MODEL_KIND
from phasecode.cli import options
from phasecode.outputs import check_artifact_dir, exclusive_output
from phasecode.settings import (
    BUDGET_MODES,
    BUDGET_SENSITIVITIES,
    NEURON_RANGES,
    RECONSTRUCTIONS,
    EnergyBudget,
)

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
        "--reconstruct",
        choices=RECONSTRUCTIONS,
        default=RECONSTRUCTIONS[0],
        help="after training, tune the neurons on what the model outputs: block, each "
        "decoder layer's together on the layer's output; output, all together on the "
        "next-token distribution (KL to the prepared ANN's; conversion/reconstruct.py). "
        "Under --energy-budget the tuned neurons spend no more spike energy than the budget "
        "leaves",
    )
    parser.add_argument(
        "--neuron-range",
        choices=NEURON_RANGES,
        default=NEURON_RANGES[0],
        help="how far each trained neuron reaches: fitted keeps the range the squared-error "
        "fit chose (Alg. 1), which clips rare large values; peak widens it to the largest "
        "value its site showed in calibration; halfway by the square root of that; auto "
        "(default) keeps halfway from T=6 up unless another range clearly codes calibration text "
        "better, and below T=6 whichever does",
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
        "--budget-sensitivity",
        choices=BUDGET_SENSITIVITIES,
        help="where the price mode's per-site loss sensitivity comes from: measured (default "
        "in price mode: the Fisher estimate corrected per site kind by the loss that kind's "
        "neurons add on unsampled calibration text, then trained again) or fisher (the "
        "estimate alone, one training)",
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
    parser.add_argument(
        "--config",
        type=Path,
        metavar="RECIPE",
        help="a ConversionConfig recipe (.yaml or .json; ConversionConfig.save writes one); "
        "options given here override it",
    )
    parser.add_argument("--out", type=Path, required=True, help="artifact directory")
    parser.add_argument("--force", action="store_true", help="overwrite an artifact in --out")


def run(args: argparse.Namespace) -> int:
    from phasecode.jobs.convert import convert_job
    from phasecode.simulation.energy import load_costs

    config = options.conversion_config(args)
    options.check_calibration(args)
    if config.energy_budget is not None:
        load_costs(config.costs)  # a bad cost file is refused before the model loads
    where = options.placement(args)
    options.check_model(args, where)
    check_artifact_dir(args.out, SPIKING_MODEL_KIND, args.force)
    with exclusive_output(args.out):  # a second convert into the same --out is refused
        check_artifact_dir(args.out, SPIKING_MODEL_KIND, args.force)  # the first may have saved
        convert_job(
            args.model,
            config,
            args.out,
            args.calibration,
            placement=where,
            progress=not args.quiet,
        )
    return 0
