"""Energy from operation counts: Eq. 18 (MAC/AC), Eq. 59 (memory traffic), Eq. 60 (masking).

Costs are presets a user can replace: per-operation energies from Horowitz (ISSCC 2014,
45 nm) and a per-word SRAM access cost. A spike is one bit, so reading or writing one costs
1/word_bits of a word access (the paper's 1/32 at 32 bits).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from phasecode.errors import PhasecodeError
from phasecode.simulation.counting import OpCount

PICO = 1e-12


@dataclass(frozen=True)
class EnergyCosts:
    """Energy per operation and per word access, in picojoules."""

    name: str
    mac_pj: float
    ac_pj: float
    read_pj: float
    write_pj: float
    word_bits: int

    def __post_init__(self) -> None:
        for name in ("mac_pj", "ac_pj", "read_pj", "write_pj"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PhasecodeError(f"cost {name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise PhasecodeError(f"cost {name} must be finite and >= 0, got {value}")
        if isinstance(self.word_bits, bool) or not isinstance(self.word_bits, int):
            raise PhasecodeError(f"word_bits must be an integer, got {self.word_bits!r}")
        if self.word_bits < 1:
            raise PhasecodeError(f"word_bits must be >= 1, got {self.word_bits}")


PRESETS: dict[str, EnergyCosts] = {
    # the paper's numbers (Eq. 18; App. D.7: 5 pJ per 32-bit read or write)
    "45nm-fp32": EnergyCosts("45nm-fp32", 4.6, 0.9, 5.0, 5.0, 32),
    # Horowitz 2014: fp16 multiply 1.1 + add 0.4 pJ; a 16-bit word costs half a 32-bit access
    "45nm-fp16": EnergyCosts("45nm-fp16", 1.5, 0.4, 2.5, 2.5, 16),
    # int8 multiply 0.2 + int32 accumulate 0.1 pJ (accumulators stay wide); 8-bit words
    "45nm-int8": EnergyCosts("45nm-int8", 0.3, 0.1, 1.25, 1.25, 8),
}


def load_costs(name_or_path: str) -> EnergyCosts:
    """A preset by name, or a JSON file with the fields of ``EnergyCosts``."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    looks_like_file = path.suffix or "/" in name_or_path or path.exists()
    if not path.is_file():
        if looks_like_file:
            raise PhasecodeError(f"cost file not found: {path}")
        raise PhasecodeError(
            f"unknown cost preset {name_or_path!r}; choose from {', '.join(PRESETS)} "
            "or give a JSON file with mac_pj, ac_pj, read_pj, write_pj, word_bits"
        )
    try:
        fields = json.loads(path.read_text())
        if not isinstance(fields, dict):
            raise TypeError("not an object")
        return EnergyCosts(**{"name": path.stem, **fields})
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as error:
        raise PhasecodeError(
            f"{path}: expected a JSON object with mac_pj, ac_pj, read_pj, write_pj, word_bits "
            f"({error})"
        ) from error


def energy(counts: OpCount, costs: EnergyCosts, mask_cost: bool = False) -> dict[str, float]:
    """Joules by component. ``compute_j`` is Eq. 18 (MACs and ACs); ``rw_j`` the memory
    traffic of Eq. 59; ``neuron_j`` is E_neuron, doubled when masking is on (Eq. 60 prices
    the mask like a second neuron computation); ``total_j`` is their sum."""
    compute = counts.mac * costs.mac_pj + counts.ac * costs.ac_pj
    bits = (counts.bit_reads * costs.read_pj + counts.bit_writes * costs.write_pj) / costs.word_bits
    rw = counts.reads * costs.read_pj + counts.writes * costs.write_pj + bits
    neuron = counts.neuron_ops * costs.ac_pj * (2 if mask_cost else 1)
    return {
        "compute_j": compute * PICO,
        "rw_j": rw * PICO,
        "neuron_j": neuron * PICO,
        "total_j": (compute + rw + neuron) * PICO,
    }


def summary(counts: OpCount, costs: EnergyCosts, mask_cost: bool = False) -> dict[str, float]:
    """Counts and energies of one network, in the shape of `phasecode energy`'s JSON."""
    joules = energy(counts, costs, mask_cost)
    out = {
        "mac": counts.mac,
        "ac": counts.ac,
        "energy_j": joules["compute_j"],
        "rw_energy_j": joules["rw_j"],
        "neuron_energy_j": joules["neuron_j"],
        "total_energy_j": joules["total_j"],
        "reads": counts.reads,
        "writes": counts.writes,
        "spike_reads": counts.bit_reads,
        "spike_writes": counts.bit_writes,
    }
    if counts.neuron_steps:
        out["spikes"] = counts.spikes
        out["firing_rate"] = counts.spikes / counts.neuron_steps
    return out


def costs_dict(costs: EnergyCosts) -> dict:
    return asdict(costs)
