"""Per-request agreement of lm-eval's HFLM(pretrained=snn) and phasecode's lm-eval model on
PIQA (the first 100 items), for the spiking model and the prepared ANN of one artifact.

    python benchmarks/api_loglikelihoods.py ARTIFACT [--items 100]

Prints each model's acc_norm and, per mode, the largest and median |Δ log-likelihood| over
the requests; writes benchmarks/results/api_loglikelihoods.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--items", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import phasecode as pc
    from phasecode.evaluation.harness import PhasecodeLM
    from phasecode.evaluation.tasks import TASK_CONFIGS, quiet_lm_eval

    snn = pc.load(args.artifact, device="cpu")
    scores, report = {}, {"artifact": str(args.artifact), "items": args.items}
    for mode in ("snn", "ann"):
        for name in ("hflm", "phasecode"):
            if name == "hflm":
                lm = HFLM(pretrained=snn, tokenizer=snn.tokenizer, batch_size=16)
            else:
                lm = PhasecodeLM(spiking=snn, batch_size=16, progress=False)
            with snn.analog() if mode == "ann" else snn.coded(), quiet_lm_eval(False):
                result = simple_evaluate(
                    model=lm,
                    tasks=["phasecode_piqa"],
                    limit=args.items,
                    log_samples=True,
                    task_manager=TaskManager(include_path=str(TASK_CONFIGS)),
                )
            samples = result["samples"]["phasecode_piqa"]
            scores[mode, name] = [float(r[0][0]) for s in samples for r in s["resps"]]
            report[f"{mode}_{name}_acc_norm"] = result["results"]["phasecode_piqa"]["acc_norm,none"]
        pairs = list(zip(scores[mode, "hflm"], scores[mode, "phasecode"], strict=True))
        diffs = sorted(abs(a - b) for a, b in pairs)
        report[f"{mode}_max_abs"] = diffs[-1]
        report[f"{mode}_median_abs"] = diffs[len(diffs) // 2]
        report[f"{mode}_max_rel"] = max(abs(a - b) / max(abs(b), 1e-9) for a, b in pairs)
    print(json.dumps(report, indent=2))
    (RESULTS / "api_loglikelihoods.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
