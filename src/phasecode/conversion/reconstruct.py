"""Reconstruction after Alg. 1/2: neurons tuned on what their decoder layer outputs (block-wise),
or all together on what the model outputs.

Alg. 1 fits every neuron to its own site's samples in isolation, so nothing sees how an error
at one site is amplified or cancelled by the sites after it (BRECQ's observation for
quantization). Here, for each decoder layer in turn, the parameters of all the layer's neurons
(θ, h, θ⁻ as multipliers of their fitted values; the phase scale and bases, from which d(t) is
built) are tuned together so that the layer's output, with every neuron of the layer in place
and the earlier layers already coded, matches the prepared ANN's output on calibration tokens.

- The spike dynamics are the surrogate ones of Alg. 1 (``training.dynamics``); the gradient
  reaches a neuron's input straight through (∂SN(x)/∂x = 1 inside its range, 0 where it
  clips), so a neuron learns from the error of every site after it in the layer.
- The target is the ANN layer on the same (coded) input, with each token's error measured
  relative to its own norm (``_loss``). ``target="trajectory"`` matches the ANN's own
  layer-i output instead, asking a layer to also undo the earlier layers' error (measured
  worse, docs/method.md).
- Under an energy budget (``spike_pj``) the layer's neurons may move spikes between its sites
  but not spend more than ``headroom`` × the fitted neurons' (what the budget leaves): a hinge
  on the layer's spike energy above that joins the objective, and tuned neurons that spend
  more on the calibration tokens are not kept, so a budget the training met stays met.
- ``reconstruct_output`` tunes every neuron at once on KL(prepared ANN ‖ SNN) of the
  next-token distribution, the loss perplexity measures; it costs a forward and a backward of
  the whole model per step instead of one layer's.
- Block-wise, it streams: one layer is run at a time, from its coded input (kept for the
  calibration tokens, as a sequential pipeline keeps activations on a GPU) and the
  transformers decoder layer's own forward, with the prefix's keys/values in a fresh cache
  each call.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from phasecode.coding.table import CodeTable, PhaseBases, concat_tables, phase_weights
from phasecode.conversion.convert import Calibrated, SpikingModel, site_scores
from phasecode.conversion.handlers import Passthrough
from phasecode.errors import PhasecodeError
from phasecode.inference.prefix import run_after
from phasecode.models.adapters import adapter_for
from phasecode.models.sites import SiteKey
from phasecode.training.dynamics import surrogate_dynamics
from phasecode.training.neurons import MIN_BASE


@dataclass(frozen=True)
class ReconstructSettings:
    """How long and on what each layer is tuned."""

    windows: int = 8  # calibration windows whose outputs are matched
    steps: int = 10  # passes over the windows per layer, one optimiser step per batch
    batch: int = 4
    lr: float = 0.003  # Adam, on relative parameters
    sharpness: float = 4.0  # surrogate slope, in units of 1/d(t) (as Alg. 1)
    # what the layer's output is matched to: the ANN layer on the same (coded) input, or the
    # ANN's own trajectory (the layer then also tries to undo the earlier layers' error)
    target: str = "same-input"
    # under an energy budget: weight of the layer's spike energy above what it may spend,
    # relative to that (1 % over costs as much as a 1 % relative output error)
    energy_weight: float = 1.0


class TunedNeurons(nn.Module):
    """Some sites' neurons as trainable changes of a fitted phase table: θ, h (and θ⁻) times
    learned factors, d(t) = scale·B^(-t) from learned scales and bases."""

    def __init__(self, table: CodeTable):
        super().__init__()
        if table.phase is None:
            raise PhasecodeError("block reconstruction needs phase-coded neurons (--method mgpc)")
        self.start = table
        ones = torch.ones_like(table.threshold)
        self.u_threshold = nn.Parameter(ones.clone())
        self.u_reset = nn.Parameter(ones.clone())
        self.u_negative = nn.Parameter(ones.clone()) if table.signed else None
        self.log_scale = nn.Parameter(table.phase.scale.log().clone())
        self.bases = nn.Parameter(table.phase.bases.clone())

    def table(self) -> CodeTable:
        start = self.start
        allocation = start.phase.allocation
        weight = phase_weights(self.log_scale.exp(), self.bases, allocation)
        negative = None
        if self.u_negative is not None:
            negative = start.negative_threshold * self.u_negative
        return CodeTable(
            start.threshold * self.u_threshold,
            start.reset * self.u_reset,
            weight,
            start.max_spikes,
            PhaseBases(self.log_scale.exp(), self.bases, allocation),
            negative,
            start.steps,
        )

    def frozen_table(self) -> CodeTable:
        with torch.no_grad():
            table = self.table()
        phase = table.phase
        return CodeTable(
            table.threshold.detach(),
            table.reset.detach(),
            table.weight.detach(),
            table.max_spikes,
            PhaseBases(phase.scale.detach(), phase.bases.detach(), phase.allocation),
            None if table.negative_threshold is None else table.negative_threshold.detach(),
            table.steps,
        )

    def clamp_(self) -> None:
        with torch.no_grad():
            self.bases.clamp_(min=MIN_BASE)
            for p in (self.u_threshold, self.u_reset, self.u_negative):
                if p is not None:
                    p.clamp_(min=1e-3)


class SurrogateCoder:
    """A site handler: SN(x) of the tuned sites with surrogate gradients, others pass; with
    ``spike_pj`` (one spike's energy per tuned site) it also sums the spikes' energy of a
    forward, with the surrogate's gradient."""

    def __init__(
        self,
        neurons: TunedNeurons,
        sites: list[str],
        sharpness: float,
        spike_pj: Tensor | None = None,
    ):
        self.neurons, self.sharpness, self.spike_pj = neurons, sharpness, spike_pj
        self.index = {name: i for i, name in enumerate(sites)}
        self.current: CodeTable | None = None
        self.energy: Tensor | float = 0.0

    def refresh(self) -> None:
        """Build the current table once per step (every site reads a row of it) and start a
        new energy sum."""
        self.current = self.neurons.table()
        self.energy = 0.0

    def __call__(self, site: str, x: Tensor) -> Tensor:
        index = self.index.get(site)
        if index is None:
            return x
        row = self.current.select(index)
        magnitude = x.abs().reshape(1, -1).to(row.weight.dtype)
        out, count = surrogate_dynamics(magnitude, row, self.sharpness)
        if self.spike_pj is not None:
            self.energy = self.energy + count.sum() * self.spike_pj[index]
        return (torch.sign(x) * out.view(x.shape)).to(x.dtype)


@torch.no_grad()
def _record_layers(spiking: SpikingModel, windows: Tensor, batch: int, outputs: bool):
    """Per batch of windows: the prepared ANN's input to layer 0, the keyword arguments every
    layer was called with (masks, RoPE tables) and, with ``outputs``, every layer's output."""
    model, prefix = spiking.model, spiking.prefix
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    inputs, recorded, arguments = [], [[] for _ in layers], [[] for _ in layers]
    handles = []

    def pre(i):
        def hook(module, args, kwargs):
            if i == 0:
                inputs.append(args[0] if args else kwargs["hidden_states"])
            arguments[i].append({k: v for k, v in kwargs.items() if k not in ("cache",)})

        return hook

    def post(i):
        def hook(module, args, kwargs, output):
            recorded[i].append(output[0] if isinstance(output, tuple) else output)

        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        if outputs:
            handles.append(layer.register_forward_hook(post(i), with_kwargs=True))
    try:
        with spiking.surgery(Passthrough()):
            for part in windows.split(batch):
                run_after(model, prefix, part, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return inputs, recorded, arguments


def _loss(out: Tensor, target: Tensor) -> Tensor:
    """Each token's squared error relative to its target's squared norm, averaged: the next
    RMSNorm divides every token by its own scale, so a token with massive activations (an
    attention sink) counts no more than any other."""
    error = (out - target).pow(2).sum(-1)
    return (error / target.pow(2).sum(-1).clamp_min(1e-12)).mean()


def _run_layer(layer: nn.Module, prefix, hidden: Tensor, kwargs: dict) -> Tensor:
    cache = prefix.cache_for(len(hidden)) if prefix is not None else None
    out = layer(hidden, **kwargs, cache=cache)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def _layer_loss(
    spiking, coder, layer, i, prefix, hidden, arguments, targets
) -> tuple[float, list[float]]:
    """The layer's output error against the ANN's, over all recorded batches, and its
    neurons' spike energy in each batch (zeros without ``coder.spike_pj``)."""
    total, energies = 0.0, []
    with spiking.surgery(coder):
        for b, x in enumerate(hidden):
            coder.refresh()
            out = _run_layer(layer, prefix, x, arguments[i][b])
            total += _loss(out, targets[i][b]).item()
            energies.append(float(coder.energy))
    return total / len(hidden), energies


@dataclass(frozen=True)
class _EnergyHold:
    """What tuned neurons may spend under an energy budget: ``headroom`` × the fitted
    neurons' spike energy in each batch (``spent``), as a hinge in the objective and as a
    condition for keeping them."""

    spent: list[float]
    headroom: float
    weight: float

    def penalised(self, loss: Tensor, energy: Tensor | float, batch: int) -> Tensor:
        allowed = self.headroom * self.spent[batch]
        if allowed <= 0:
            return loss
        return loss + self.weight * torch.relu(torch.as_tensor(energy) / allowed - 1)

    def kept(self, spends: list[float]) -> bool:
        return sum(spends) <= self.headroom * sum(self.spent)

    def ratio(self, spends: list[float]) -> float:
        """The tuned neurons' spike energy over the fitted ones'."""
        return sum(spends) / sum(self.spent) if sum(self.spent) > 0 else 1.0


@contextmanager
def _frozen_weights(model: nn.Module):
    """The model's own parameters out of autograd while the neurons are tuned."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def reconstruct_blocks(
    spiking: SpikingModel,
    windows: Tensor,
    settings: ReconstructSettings = ReconstructSettings(),
    progress: bool = True,
    spike_pj: Tensor | None = None,
    headroom: float = 1.0,
) -> dict:
    """Tune every decoder layer's neurons in turn (module docstring); updates
    ``spiking.table`` in place of the fitted one and returns per-layer losses (before, after
    tuning, and of the neurons kept) and seconds. ``spike_pj`` [S]: one spike's energy at
    each site, under an energy budget (no layer's neurons may then spend more than
    ``headroom`` × the fitted ones' spike energy; None: spikes are free)."""
    start = time.perf_counter()
    model, prefix = spiking.model, spiking.prefix
    adapter = adapter_for(model)
    layers = adapter.decoder_layers(model)
    windows = windows[: settings.windows]
    trajectory = settings.target == "trajectory"
    inputs, targets, arguments = _record_layers(spiking, windows, settings.batch, trajectory)
    rows = {name: i for i, name in enumerate(spiking.sites)}
    tables = [spiking.table.select(i) for i in range(spiking.table.sites)]
    history = []
    hidden = inputs  # coded inputs of the current layer, per batch
    with _frozen_weights(model):
        for i, layer in enumerate(tqdm(layers, desc="reconstruct", disable=not progress)):
            names = [n for n in spiking.sites if SiteKey.parse(n).layer == i]
            indices = [rows[n] for n in names]
            neurons = TunedNeurons(concat_tables([tables[k] for k in indices]))
            costs = None
            if spike_pj is not None:
                costs = spike_pj[indices].to(inputs[0].device, torch.float32)
            coder = SurrogateCoder(neurons, names, settings.sharpness, costs)
            if not trajectory:
                with torch.no_grad(), spiking.surgery(Passthrough()):
                    targets[i] = [
                        _run_layer(layer, prefix, x, arguments[i][b]) for b, x in enumerate(hidden)
                    ]
            optimizer = torch.optim.Adam(neurons.parameters(), lr=settings.lr)
            before, spent = _layer_loss(
                spiking, coder, layer, i, prefix, hidden, arguments, targets
            )
            hold = _EnergyHold(spent, headroom, settings.energy_weight)
            for _ in range(settings.steps):
                for b, x in enumerate(hidden):
                    coder.refresh()
                    with spiking.surgery(coder), torch.enable_grad():
                        out = _run_layer(layer, prefix, x, arguments[i][b])
                        loss = _loss(out, targets[i][b])
                        if spike_pj is not None:
                            loss = hold.penalised(loss, coder.energy, b)
                        optimizer.zero_grad()
                        loss.backward()
                    optimizer.step()
                    neurons.clamp_()
            after, spends = _layer_loss(
                spiking, coder, layer, i, prefix, hidden, arguments, targets
            )
            # never worse than the fitted neurons on the calibration tokens, nor costlier
            better = after < before and hold.kept(spends)
            tuned = neurons.frozen_table() if better else neurons.start
            for k, index in enumerate(indices):
                tables[index] = tuned.select(k)
            record = {
                "layer": i,
                "loss_before": before,
                "loss_tuned": after,
                "loss_after": after if better else before,
            }
            if spike_pj is not None:
                record["energy_tuned"] = hold.ratio(spends)
            history.append(record)
            spiking.table = concat_tables(tables)
            spiking._coders.clear()
            with torch.no_grad(), spiking.coded():
                hidden = [
                    _run_layer(layer, prefix, x, arguments[i][b]) for b, x in enumerate(hidden)
                ]
    return {"layers": history, "seconds": time.perf_counter() - start}


@dataclass(frozen=True)
class OutputSettings:
    """How long and on what all neurons are tuned on the model's output."""

    windows: int = 16  # calibration windows whose next-token distributions are matched
    passes: int = 5  # over the windows, one optimiser step per batch
    batch: int = 2
    lr: float = 0.003  # Adam, on relative parameters
    sharpness: float = 4.0
    energy_weight: float = 1.0  # as ``ReconstructSettings.energy_weight``, for the whole model


def _kl(model, prefix, tokens: Tensor, target: Tensor) -> Tensor:
    """Mean per-token KL(target ‖ model) of the next-token distributions; ``target`` holds
    the prepared ANN's log-probabilities."""
    logits = run_after(model, prefix, tokens).logits.float()
    return (target.exp() * (target - torch.log_softmax(logits, -1))).sum(-1).mean()


def reconstruct_output(
    spiking: SpikingModel,
    windows: Tensor,
    settings: OutputSettings = OutputSettings(),
    progress: bool = True,
    spike_pj: Tensor | None = None,
    headroom: float = 1.0,
) -> dict:
    """Tune every neuron together so that the SNN's next-token distribution matches the
    prepared ANN's (mean KL over the calibration tokens), through the same surrogate
    dynamics and straight-through gradients as ``reconstruct_blocks``. It is the objective
    perplexity answers to: a layer's output error weighs each site's error by how far it
    moves that output, not by what it costs the loss (docs/method.md). The ANN's
    distribution is recomputed per batch rather than stored (a vocabulary's worth of floats
    per token). With ``spike_pj`` the model's spike energy is held to ``headroom`` × the
    fitted neurons' as a layer's is in ``reconstruct_blocks``. The tuned neurons are kept
    only if their KL on the windows is lower and they spend no more than that; where the
    last pass's do not, the latest earlier pass's that do are kept (``passes_kept``; the
    hinge lets a pass overspend a little), and where none do, the fitted neurons stay."""
    start = time.perf_counter()
    model, prefix = spiking.model, spiking.prefix
    parts = list(windows[: settings.windows].split(settings.batch))
    neurons = TunedNeurons(spiking.table)
    device = parts[0].device
    costs = None if spike_pj is None else spike_pj.to(device, torch.float32)
    coder = SurrogateCoder(neurons, spiking.sites, settings.sharpness, costs)

    def target(tokens: Tensor) -> Tensor:
        with torch.no_grad(), spiking.surgery(Passthrough()):
            return torch.log_softmax(run_after(model, prefix, tokens).logits.float(), -1)

    @torch.no_grad()
    def measure() -> tuple[float, list[float]]:
        total, energies = 0.0, []
        for tokens in parts:
            goal = target(tokens)
            coder.refresh()
            with spiking.surgery(coder):
                total += _kl(model, prefix, tokens, goal).item()
            energies.append(float(coder.energy))
        return total / len(parts), energies

    with _frozen_weights(model):
        before, spent = measure()
        hold = _EnergyHold(spent, headroom, settings.energy_weight)
        optimizer = torch.optim.Adam(neurons.parameters(), lr=settings.lr)
        steps = settings.passes * len(parts)
        passes: list[list[Tensor]] = []  # the neurons' parameters after each pass
        with tqdm(total=steps, desc="tune on the output", disable=not progress) as bar:
            for _ in range(settings.passes):
                for b, tokens in enumerate(parts):
                    goal = target(tokens)
                    coder.refresh()
                    with spiking.surgery(coder), torch.enable_grad():
                        loss = _kl(model, prefix, tokens, goal)
                        if costs is not None:
                            loss = hold.penalised(loss, coder.energy, b)
                        optimizer.zero_grad()
                        loss.backward()
                    optimizer.step()
                    neurons.clamp_()
                    bar.update()
                passes.append([p.detach().clone() for p in neurons.parameters()])
        after, spends = measure()
        while not (after < before and hold.kept(spends)) and len(passes) > 1:
            passes.pop()
            with torch.no_grad():
                for param, saved in zip(neurons.parameters(), passes[-1], strict=True):
                    param.copy_(saved)
            after, spends = measure()
    kept = after < before and hold.kept(spends)
    if kept:
        spiking.table = neurons.frozen_table()
        spiking._coders.clear()
    record = {
        "kl_before": before,
        "kl_tuned": after,
        "kept": kept,
        "passes_kept": len(passes) if kept else 0,
        "steps": steps,
    }
    if costs is not None:
        record["energy_tuned"] = hold.ratio(spends)
    return record | {"seconds": time.perf_counter() - start}


def reconstruct(
    c: Calibrated,
    spiking: SpikingModel,
    how: str,
    progress: bool = True,
    spike_pj: Tensor | None = None,
    headroom: float = 1.0,
) -> dict:
    """Tune the trained neurons on the conversion's calibration windows, ``how`` = "block"
    (``reconstruct_blocks``) or "output" (``reconstruct_output``); the report's per-site
    scores are then those of the tuned neurons."""
    tune = {"block": reconstruct_blocks, "output": reconstruct_output}[how]
    record = tune(spiking, c.windows, progress=progress, spike_pj=spike_pj, headroom=headroom)
    sites = site_scores(c, spiking.table)
    spiking.report["sites"] = sites
    spiking.report["mean_ratio"] = sum(row["ratio"] for row in sites) / len(sites)
    return record
