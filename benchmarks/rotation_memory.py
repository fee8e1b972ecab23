"""Benchmark: memory and time of folding the down_proj Hadamard into a LLaMA-3-8B-sized layer.

One down_proj, nn.Linear(14336, 4096, bias=False) (14336 = 2^11·7), is folded W ← W·H by
``fold_down_rotation`` in bfloat16 and float32 on the CPU, each case in a fresh subprocess, so
the peak resident memory of the fold step is its own: the peak (VmHWM, reset just before the
fold through /proc/self/clear_refs, else ru_maxrss) minus the resident memory before it. The
dense approach it replaces is only computed, never allocated: H alone is 14336²·8 bytes, plus
the float64 copy of the whole weight and of its product. A microbenchmark of the fast
Walsh-Hadamard transform against the Sylvester GEMM sets ``FWHT_MIN_ORDER``.
Writes benchmarks/results/rotation_memory.json (~1-2 minutes on 2 cores).

    python benchmarks/rotation_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import torch
from torch import nn

from phasecode.artifacts import write_json_atomic
from phasecode.models import hadamard
from phasecode.models.hadamard import OnlineRotation, fwht, sylvester
from phasecode.models.rotation import CHUNK_BYTES, fold_down_rotation

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "rotation_memory.json"
HIDDEN, INTERMEDIATE = 4096, 14336  # LLaMA-3-8B
CASES = {  # name: (weight dtype, fast Walsh-Hadamard transform for the 2^11 factor)
    "bfloat16": ("bfloat16", None),
    "float32": ("float32", None),
    "float32_gemm": ("float32", False),
}
MIB = 2**20


class _OneLayer(nn.Module):
    """The smallest module tree the LLaMA adapter accepts: model.layers.0.mlp.down_proj."""

    def __init__(self, down: nn.Linear):
        super().__init__()
        self.config = SimpleNamespace(model_type="llama")
        mlp = nn.Module()
        mlp.down_proj = down
        layer = nn.Module()
        layer.mlp = mlp
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([layer])


def _reset_peak() -> bool:
    """Reset the kernel's peak RSS (VmHWM) to the current RSS; False where Linux refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    """Peak resident bytes since the last reset (VmHWM), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(name: str) -> dict:
    """One fold in this (fresh) process: peak extra memory and time."""
    dtype_name, fast = CASES[name]
    dtype = getattr(torch, dtype_name)
    process = psutil.Process()
    with torch.no_grad():
        down = nn.Linear(INTERMEDIATE, HIDDEN, bias=False, device="meta")
        down.weight = nn.Parameter(torch.empty(HIDDEN, INTERMEDIATE, dtype=dtype), False)
        down.weight.normal_(0, INTERMEDIATE**-0.5, generator=torch.Generator().manual_seed(0))
    model = _OneLayer(down)
    OnlineRotation(96)(torch.zeros(2, 96, dtype=torch.float64))  # load the BLAS kernels first
    if fast is not None:
        hadamard.FWHT_MIN_ORDER = 1 if fast else INTERMEDIATE + 1
    reset = _reset_peak()
    before, peak_before = process.memory_info().rss, _peak_rss()
    start = time.perf_counter()
    rotation = fold_down_rotation(model, seed=0)
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    weight = down.weight
    return {
        "weight_dtype": dtype_name,
        "weight_bytes": weight.numel() * weight.element_size(),
        "fwht": rotation.fast,
        "seconds": seconds,
        "rss_before_bytes": before,
        "peak_extra_bytes": peak - before,
        "peak_extra_mib": (peak - before) / MIB,
        "peak_reset": reset,
        "peak_before_fold_bytes": peak_before,
        "finite": bool(torch.isfinite(weight).all()),
        "threads": torch.get_num_threads(),
    }


def fwht_vs_gemm(elements: int = 2**21, repeats: int = 2) -> list[dict]:
    """Seconds of x·H_p on `elements` values as one p×p GEMM and as the fast transform."""

    def best(step) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return min(times)

    rows = []
    for dtype in (torch.float64, torch.float32):
        for p in (512, 1024, 2048, 4096, 8192):
            x = torch.randn(elements // p, p, dtype=dtype)
            h = sylvester(p).to(dtype)
            gemm, fast = best(lambda x=x, h=h: x @ h), best(lambda x=x: fwht(x))
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "order": p,
                    "gemm_s": gemm,
                    "fwht_s": fast,
                    "gemm_over_fwht": gemm / fast,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run() -> dict:
    load = os.getloadavg()
    cases = {}
    for name in CASES:
        done = subprocess.run(
            [sys.executable, __file__, "--case", name],
            check=True,
            capture_output=True,
            text=True,
        )
        cases[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, json.dumps(cases[name]), flush=True)
    weight64 = HIDDEN * INTERMEDIATE * 8
    dense_matrix = INTERMEDIATE**2 * 8
    results = {
        "layer": f"down_proj nn.Linear({INTERMEDIATE}, {HIDDEN}, bias=False), LLaMA-3-8B",
        "chunk_bytes": CHUNK_BYTES,
        "fwht_min_order": hadamard.FWHT_MIN_ORDER,
        "load_average_before": load,
        "cases": cases,
        "dense": {
            "matrix_bytes": dense_matrix,
            "matrix_mib": dense_matrix / MIB,
            "fold_peak_extra_bytes": dense_matrix + 2 * weight64,  # H, W in float64, W·H
            "fold_peak_extra_mib": (dense_matrix + 2 * weight64) / MIB,
            "llama3_70b_matrix_bytes": 28672**2 * 8,
        },
        "fwht_vs_gemm": fwht_vs_gemm(),
    }
    for case in cases.values():
        case["dense_over_chunked_memory"] = (
            results["dense"]["fold_peak_extra_bytes"] / case["peak_extra_bytes"]
        )
    write_json_atomic(RESULTS, results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), help="(internal) run one case")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
    else:
        results = run()
        print(json.dumps({k: v for k, v in results.items() if k != "fwht_vs_gemm"}, indent=2))


if __name__ == "__main__":
    main()
