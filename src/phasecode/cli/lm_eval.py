"""`phasecode-lm-eval`: lm-eval's own CLI with the phasecode model and the offline tasks.

``--include_path`` to phasecode's task configs is added unless one is given. What lm-eval
would answer with a traceback (an unknown model arg or task, a CUDA device where there is
none) is one line and exit code 2, before any model loads.
"""

from __future__ import annotations

import sys

import torch

from phasecode.errors import PhasecodeError


def main(argv: list[str] | None = None) -> int:
    from lm_eval.__main__ import cli_evaluate

    from phasecode.evaluation.harness import register
    from phasecode.evaluation.tasks import TASK_CONFIGS

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _check_device(args)
        register()
        if args and not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
            args += ["--include_path", str(TASK_CONFIGS)]
        sys.argv = [sys.argv[0], *args]
        cli_evaluate()
    except PhasecodeError as err:
        print(f"phasecode-lm-eval: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, KeyError) as err:  # lm-eval's answer to tasks it does not know
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "not found" not in message.lower() and "task" not in message.lower():
            raise
        print(f"phasecode-lm-eval: error: {message}", file=sys.stderr)
        return 2
    return 0


def _check_device(args: list[str]) -> None:
    """A --device cuda without a GPU is refused (lm-eval would silently run on the CPU)."""
    device = None
    for at, arg in enumerate(args):
        if arg == "--device" and at + 1 < len(args):
            device = args[at + 1]
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise PhasecodeError(f"--device {device}: there is no CUDA device here; use --device cpu")
