"""The simulator's KV cache: the spike trains of past keys and values, per layer.

Spiking attention needs exactly the K and V trains of earlier tokens (Eq. 51 uses their
spikes and running sums), so that is what is kept: int8 spikes [T, B, H_kv, S, head_dim] plus
d(t). The fast path caches analog K/V and codes them on every use; coding is element-wise and
deterministic, so both see the same trains.
"""

from __future__ import annotations

from phasecode.simulation.trains import SpikeTrain


class SpikeCache:
    def __init__(self, layers: int):
        self.keys: list[SpikeTrain | None] = [None] * layers
        self.values: list[SpikeTrain | None] = [None] * layers
        self.length = 0  # tokens already processed (prefix included)

    def append(self, layer: int, keys: SpikeTrain, values: SpikeTrain) -> tuple[SpikeTrain, ...]:
        """Add one forward's trains (sequence is data dim 2) and return the layer's full trains."""
        if self.keys[layer] is not None:
            keys = self.keys[layer].cat(keys, 2)
            values = self.values[layer].cat(values, 2)
        self.keys[layer], self.values[layer] = keys, values
        return keys, values

    def nbytes(self) -> int:
        return sum(t.spikes.numel() for t in self.keys + self.values if t is not None)
