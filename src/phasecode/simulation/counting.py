"""Operation and memory-access counts of the spiking network and of the ANN on the same tokens.

The rules (docs/energy.md explains them against the paper's Tables 3, 13, 14):
- a spike-driven accumulation is one AC: Σ_t nnz(s_t) × fan-out, a signed spike counting once;
  it reads one 32-bit operand (the weight, or the other train's accumulated value) plus the
  1-bit spike;
- scaling an output by d(t) is one MAC per output element and step (per operand in Eq. 51/55);
- φ in accumulate–difference form (Eq. 52-54) costs T evaluations of φ (``ELEMENTWISE_MACS``
  MACs per element each) and two ACs per element and step (accumulate, difference);
- analog MACs and ACs read two 32-bit operands and write one 32-bit result, in both networks
  (the ANN's Count_read of Eq. 59 is its MAC count, read twice);
- a neuron costs ``NEURON_OPS`` AC-equivalents per step (integrate, compare, reset): E_neuron;
  each spike is a 1-bit write.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, fields

from torch import Tensor, nn

from phasecode.models.hadamard import OnlineRotation
from phasecode.simulation.trains import SpikeTrain

# MACs per element for one evaluation of an element-wise function (a convention: exp and
# rsqrt are counted as one MAC each, as multiply-accumulate energy tables do).
# GELU(tanh): x³ (2), the cubic's multiply-add (1), its scale (1), tanh (1), 0.5·x·(1 + ·) (1).
ELEMENTWISE_MACS = {"rmsnorm": 3, "softmax": 2, "silu": 3, "gelu": 6, "rope": 2}
NEURON_OPS = 3  # integrate, compare with θ(t), subtract h(t): per neuron and step


@dataclass
class OpCount:
    """Counts of one network for one operation; all are plain numbers of events."""

    mac: float = 0.0
    ac: float = 0.0
    reads: float = 0.0  # 32-bit operand reads
    writes: float = 0.0  # 32-bit result writes
    bit_reads: float = 0.0  # 1-bit spike reads
    bit_writes: float = 0.0  # 1-bit spike writes
    spikes: float = 0.0
    neuron_steps: float = 0.0  # neurons × T
    neuron_ops: float = 0.0

    def add(self, other: OpCount) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def analog_mac(n: float, outputs: float) -> OpCount:
    """n MACs producing ``outputs`` results, each MAC reading two operands."""
    return OpCount(mac=n, reads=2 * n, writes=outputs)


def analog_ac(n: float, outputs: float) -> OpCount:
    return OpCount(ac=n, reads=2 * n, writes=outputs)


def spike_ac(n: float) -> OpCount:
    """n spike-driven accumulations: one 32-bit operand and one spike bit read each."""
    return OpCount(ac=n, reads=n, bit_reads=n)


@dataclass
class Counter:
    """Counts of the spiking network (``snn``) and the ANN (``ann``) keyed by (layer, op)."""

    snn: dict = None
    ann: dict = None

    def __post_init__(self) -> None:
        self.snn = defaultdict(OpCount)
        self.ann = defaultdict(OpCount)

    def add(self, key: tuple[str, str], snn: OpCount | None = None, ann: OpCount | None = None):
        if snn is not None:
            self.snn[key].add(snn)
        if ann is not None:
            self.ann[key].add(ann)

    def site(self, key: tuple[str, str], train: SpikeTrain) -> None:
        """A site's neurons: spikes, neuron steps and E_neuron's operations."""
        spikes = train.spike_count
        steps = float(train.spikes[0].numel() * train.active_steps)
        self.add(
            key,
            OpCount(
                spikes=spikes, neuron_steps=steps, neuron_ops=NEURON_OPS * steps, bit_writes=spikes
            ),
        )

    def linear(self, key: tuple[str, str], train: SpikeTrain, linear: nn.Linear) -> None:
        out, fan_in = linear.out_features, linear.in_features
        tokens = train.spikes[0].numel() / fan_in
        spikes = train.spike_count
        t = train.active_steps
        bias = tokens * out if linear.bias is not None else 0.0
        snn = spike_ac(spikes * out)
        snn.add(analog_mac(t * tokens * out, 0.0))  # d(t) scaling, feeding the next neuron
        snn.add(analog_ac(bias, 0.0))
        ann = analog_mac(tokens * fan_in * out, tokens * out)
        ann.add(analog_ac(bias, 0.0))
        self.add(key, snn, ann)

    def analog_linear(self, key: tuple[str, str], tokens: float, linear: nn.Linear) -> None:
        """A linear whose input stayed analog: the same MACs in both networks."""
        count = analog_mac(
            tokens * linear.in_features * linear.out_features, tokens * linear.out_features
        )
        self.add(key, count, count)

    def elementwise(self, key: tuple[str, str], kind: str, elements: float, timesteps: int):
        """φ by accumulate–difference in the SNN, once in the ANN."""
        cost = ELEMENTWISE_MACS[kind]
        snn = analog_mac(cost * timesteps * elements, timesteps * elements)
        snn.add(analog_ac(2 * timesteps * elements, 0.0))
        self.add(key, snn, analog_mac(cost * elements, elements))

    def residual(self, key: tuple[str, str], elements: float, timesteps: int) -> None:
        self.add(
            key,
            analog_ac(timesteps * elements, timesteps * elements),
            analog_ac(elements, elements),
        )

    def both_mac(self, key: tuple[str, str], n: float, outputs: float) -> None:
        count = analog_mac(n, outputs)
        self.add(key, count, count)

    def matmul(
        self, key: tuple[str, str], a: SpikeTrain, b: SpikeTrain, rows: Tensor, keys_first: bool
    ) -> None:
        """Eq. 51 for Q·Kᵀ (``keys_first``: ``a`` = Q, ``b`` = K) or P·V (``a`` = P, ``b`` = V).

        ``a`` is [T, B, H, Sq, ·], ``b`` [T, B, H, Sk, ·] (KV heads already repeated per query
        head); ``rows`` [Sq, Sk] says which keys each query sees (causal, windowed): only
        those products are counted.
        """
        steps = a.active_steps + b.active_steps  # d(t) scalings, one per operand and step
        batch, heads = a.spikes.shape[1], a.spikes.shape[2]
        visible = rows.double()
        pairs = float(visible.sum()) * batch * heads
        inner = b.spikes.shape[-1]
        b_per_key = (b.spikes != 0).sum((1, 2, 4)).double()  # [T, Sk]
        from_b = float((b_per_key * visible.sum(0)).sum())  # each reaches its queries
        if keys_first:  # a query spike meets every visible key
            a_per_query = (a.spikes != 0).sum((1, 2, 4)).double()  # [T, Sq]
            from_a = float((a_per_query * visible.sum(1)).sum())
            outputs = pairs
        else:  # a probability spike adds one value row
            from_a = a.spike_count * inner
            outputs = float(rows.shape[0] * batch * heads * inner)
        snn = spike_ac(from_a + from_b)
        snn.add(analog_mac(steps * outputs, 0.0))
        depth = a.spikes.shape[-1]
        self.add(key, snn, analog_mac(pairs * (depth if keys_first else inner), outputs))

    def rotation(self, key: tuple[str, str], elements: int, rotation: OnlineRotation) -> None:
        """The online H_{2^k} ⊗ Q_m rotation (SNN only; the original ANN has none), priced as
        hardware would run it: a fast Walsh-Hadamard transform (k additions per element) and
        m MACs per element for the odd factor."""
        power, odd = rotation.power.shape[0], rotation.odd.shape[0]
        count = analog_ac(elements * math.log2(power), elements)
        if odd > 1:
            count.add(analog_mac(elements * odd, 0.0))
        self.add(key, count)

    def product(self, key: tuple[str, str], a: SpikeTrain, b: SpikeTrain) -> None:
        """Eq. 55: every spike of either train adds one value of the other."""
        elements = float(a.spikes[0].numel())
        spikes = a.spike_count + b.spike_count
        snn = spike_ac(spikes)
        snn.add(analog_mac((a.active_steps + b.active_steps) * elements, 0.0))
        self.add(key, snn, analog_mac(elements, elements))

    def totals(self, network: str) -> OpCount:
        total = OpCount()
        for count in getattr(self, network).values():
            total.add(count)
        return total
