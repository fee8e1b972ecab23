"""CLI of the spike-level side: `phasecode simulate | energy | generate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from phasecode.artifacts import write_json_atomic
from phasecode.errors import PhasecodeError
from phasecode.simulation.energy import PRESETS


def add_spiking_commands(sub, common: argparse.ArgumentParser) -> None:
    simulate = sub.add_parser(
        "simulate", parents=[common], help="run a converted model as spikes; --check the fast path"
    )
    simulate.add_argument("artifact", type=Path)
    simulate.add_argument("--check", action="store_true", help="compare with the fast path")
    simulate.add_argument("--tokens", type=int, default=64, help="WikiText-2 test tokens")
    simulate.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="float64 (default) gives an exact check; in float32 the spiking network is "
        "chaotic under rounding (the check then measures that floor)",
    )
    simulate.add_argument("--mask", type=int, default=0, help="spike-masking strength")
    simulate.add_argument("--text", help="corpus name or text file (default: WikiText-2 test)")
    simulate.add_argument("--json", type=Path, help="write the report as JSON")

    energy = sub.add_parser(
        "energy", parents=[common], help="spikes, operations and energy per layer (Eq. 18/59/60)"
    )
    energy.add_argument("artifact", type=Path)
    energy.add_argument("--tokens", type=int, default=512, help="WikiText-2 test tokens")
    energy.add_argument(
        "--mask",
        type=int,
        default=3,
        help="masking strength: drop spikes more than T-1-S "
        "steps after a neuron's first (0 = none)",
    )
    energy.add_argument(
        "--costs", default="45nm-fp32", help=f"{' | '.join(PRESETS)} or a JSON file of costs"
    )
    energy.add_argument("--windows", type=int, default=8, help="WikiText-2 windows for PPL")
    energy.add_argument("--seq-len", type=int, default=512, help="PPL window length")
    energy.add_argument("--text", default="wikitext2", help="corpus name or text file")
    energy.add_argument("--json", type=Path, help="write the report as JSON")

    generate = sub.add_parser(
        "generate", parents=[common], help="greedy text generation with a KV cache"
    )
    generate.add_argument("artifact", type=Path)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=int, default=32)
    generate.add_argument("--spiking", action="store_true", help="run the spike-level simulator")
    generate.add_argument("--float64", action="store_true", help="run in float64")
    generate.add_argument("--mask", type=int, default=0, help="spike-masking strength")


def run_simulate(args: argparse.Namespace) -> int:
    from phasecode.jobs.simulate import simulate_job

    report = simulate_job(
        args.artifact, args.tokens, args.check, args.dtype == "float64", args.mask, args.text
    )
    if args.json:
        write_json_atomic(args.json, report)
    return 1 if args.check and not report["check"]["passed"] else 0


def run_energy(args: argparse.Namespace) -> int:
    from phasecode.jobs.energy import energy_job

    if args.tokens < 1 or args.windows < 1:
        raise PhasecodeError("--tokens and --windows must be >= 1")
    report = energy_job(
        args.artifact,
        args.tokens,
        args.mask,
        args.costs,
        args.windows,
        args.seq_len,
        progress=not args.quiet,
        text=args.text,
    )
    if args.json:
        write_json_atomic(args.json, report)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from phasecode.jobs.generate import generate_job

    generate_job(
        args.artifact, args.prompt, args.max_new_tokens, args.spiking, args.float64, args.mask
    )
    return 0


SPIKING_COMMANDS = {"simulate": run_simulate, "energy": run_energy, "generate": run_generate}
