"""The spike-level simulator: a converted model run as its spiking network (Fig. 2 right).

Between sites every signal is a stack of T per-step increments; each neuron integrates the
increments it receives, then fires T spike tensors (``trains.encode``). Linear layers consume
spikes step by step (``ops.linear_steps``), RMSNorm / softmax / SiLU run by accumulate–
difference, Q·Kᵀ and P·V by Eq. 51 and SiLU·up by Eq. 55 (``ops``). The weights, rotations and
prefix are the artifact's, read from the same (rotated) transformers modules the fast path
runs, so the two differ only by floating-point summation order.

Memory is bounded by chunking: the MLP and lm_head run ``token_chunk`` tokens at a time
(peak [T, chunk, intermediate] increments; logits are accumulated step by step, never
[T, seq, vocab]), attention runs as many heads at a time as keep T·B·heads·S·S_kv under
``attention_elements``. The residual stream [T, B, S, hidden] is the largest resident tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from phasecode.conversion.convert import SpikingModel
from phasecode.models.adapters import adapter_for
from phasecode.models.sites import LM_HEAD, site_name
from phasecode.simulation.cache import SpikeCache
from phasecode.simulation.counting import ELEMENTWISE_MACS, Counter
from phasecode.simulation.ops import (
    accumulate_difference,
    linear_steps,
    spike_matmul,
    spike_product,
)
from phasecode.simulation.trains import SpikeTrain, encode, integrate

TOKEN_CHUNK = 128  # tokens per MLP / lm_head pass: bounds [T, chunk, intermediate]


class SpikingSimulator:
    """Runs a ``SpikingModel`` timestep by timestep; optionally counts every operation."""

    def __init__(
        self,
        spiking: SpikingModel,
        mask_strength: int = 0,
        counter: Counter | None = None,
        token_chunk: int = TOKEN_CHUNK,
        attention_elements: int = 1 << 24,
    ):
        self.spiking, self.model = spiking, spiking.model
        self.adapter = adapter_for(self.model)
        self.rows = {name: spiking.table.select(i) for i, name in enumerate(spiking.sites)}
        self.timesteps = spiking.table.timesteps
        self.mask_strength, self.counter = mask_strength, counter
        self.token_chunk, self.attention_elements = token_chunk, attention_elements
        self.layers = self.adapter.decoder_layers(self.model)
        self.rope: Callable = self.adapter.apply_rope(self.model)
        self.head_rotation = spiking.head_rotation

    def new_cache(self, batch: int = 1) -> SpikeCache:
        """An empty cache, holding the prefix's keys/values coded by the k and v neurons."""
        cache = SpikeCache(len(self.layers))
        prefix = self.spiking.prefix
        if prefix is not None:
            for i, (k, v) in enumerate(prefix.keys_values):
                expand = (batch, -1, -1, -1)
                if self.head_rotation is not None:  # the cache holds keys as RoPE left them
                    k = self.head_rotation(k)
                cache.append(
                    i, self._fire(i, "k", k.expand(*expand)), self._fire(i, "v", v.expand(*expand))
                )
            cache.length = len(prefix)
        return cache

    @torch.no_grad()
    def forward(self, input_ids: Tensor, cache: SpikeCache | None = None) -> Tensor:
        """Logits [B, S, vocab] for ``input_ids`` [B, S] after the cache (prefix) contents."""
        cache = cache if cache is not None else self.new_cache(input_ids.shape[0])
        batch, length = input_ids.shape
        embeddings = self.adapter.module(self.model, self.adapter.embed)(input_ids)
        positions = torch.arange(cache.length, cache.length + length, device=input_ids.device)
        cos_sin = self.adapter.rotary_embedding(self.model)(embeddings, positions[None])
        residual = embeddings.new_zeros((self.timesteps,) + embeddings.shape)
        residual[0] = embeddings  # the embedding arrives at once: a one-step increment
        for i, layer in enumerate(self.layers):
            residual = residual + self._attention(i, layer, residual, cos_sin, positions, cache)
            self._count_residual(i, residual)
            residual = residual + self._mlp(i, layer, residual)
            self._count_residual(i, residual)
        cache.length += length
        return self._head(residual)

    # -- sites -----------------------------------------------------------------------------

    def _fire(self, layer: int | None, kind: str, x: Tensor) -> SpikeTrain:
        name = site_name(layer, kind)
        train = encode(x, self.rows[name], self.mask_strength)
        if self.counter is not None:
            self.counter.site(_key(layer, kind), train)
        return train

    def _norm(self, layer: int | None, norm: nn.Module, increments: Tensor) -> Tensor:
        if self.counter is not None:
            self.counter.elementwise(
                _key(layer, "rmsnorm"), "rmsnorm", increments[0].numel(), self.timesteps
            )
        return accumulate_difference(increments, norm)

    # -- attention -------------------------------------------------------------------------

    def _attention(
        self, i: int, layer: nn.Module, residual: Tensor, cos_sin, positions, cache: SpikeCache
    ) -> Tensor:
        adapter = self.adapter
        attention = adapter.part(layer, adapter.attention)
        x = self._norm(i, adapter.part(layer, adapter.input_norm), residual)
        train = self._fire(i, "qkv", integrate(x))
        batch, length, _ = train.spikes.shape[1:]
        heads = []
        for name in (adapter.q, adapter.k, adapter.v):
            linear = adapter.part(layer, name)
            self._count_linear(i, _op(name), train, linear)
            out = integrate(linear_steps(train, linear))
            heads.append(out.view(batch, length, -1, attention.head_dim).transpose(1, 2))
        q, k = self.rope(heads[0], heads[1], *cos_sin)
        if self.counter is not None:
            elements = q.numel() + k.numel()
            self.counter.both_mac(_key(i, "rope"), ELEMENTWISE_MACS["rope"] * elements, elements)
        if self.head_rotation is not None:  # as the fast path: per head, after RoPE
            q, k = self.head_rotation(q), self.head_rotation(k)
            if self.counter is not None:
                self.counter.rotation(_key(i, "head rotation"), elements, self.head_rotation)
        keys, values = cache.append(i, self._fire(i, "k", k), self._fire(i, "v", heads[2]))
        queries = self._fire(i, "q", q)
        visible = self._visible(i, positions, keys.spikes.shape[-2])
        out = self._attend(i, attention, queries, keys, values, visible)
        out = out.transpose(1, 2).reshape(batch, length, -1)
        o_train = self._fire(i, "o", out)
        o_proj = adapter.part(layer, adapter.o)
        self._count_linear(i, _op(adapter.o), o_train, o_proj)
        return linear_steps(o_train, o_proj)

    def _visible(self, i: int, positions: Tensor, keys: int) -> Tensor:
        """[S, S_kv] bool: which keys each query attends to (causal, sliding window)."""
        key_positions = torch.arange(keys, device=positions.device)
        gap = positions[:, None] - key_positions[None, :]
        visible = gap >= 0
        window = self.adapter.sliding_window(self.model.config, i)
        if window is not None:
            visible &= gap < window
        return visible

    def _attend(
        self,
        i: int,
        attention: nn.Module,
        q: SpikeTrain,
        k: SpikeTrain,
        v: SpikeTrain,
        visible: Tensor,
    ) -> Tensor:
        """P·V for all heads, a chunk of heads at a time; returns [B, H, S, head_dim]."""
        t, batch, heads, length = q.spikes.shape[:4]
        groups = attention.num_key_value_groups
        per_head = t * batch * length * visible.shape[1]
        chunk = max(1, min(heads, self.attention_elements // max(per_head, 1)))
        additive = torch.zeros(visible.shape, dtype=q.weight.dtype, device=visible.device)
        additive.masked_fill_(~visible, torch.finfo(q.weight.dtype).min)

        def softmax(scores: Tensor) -> Tensor:  # as the fast path (and transformers): float32
            return torch.softmax(scores + additive, dim=-1, dtype=torch.float32).to(scores.dtype)

        outputs = []
        for start in range(0, heads, chunk):
            size = min(chunk, heads - start)
            kv_index = torch.arange(start, start + size, device=visible.device) // groups
            q_c = q.narrow(1, start, size)
            k_c = SpikeTrain(k.spikes.index_select(2, kv_index), k.weight)
            v_c = SpikeTrain(v.spikes.index_select(2, kv_index), v.weight)
            k_t = SpikeTrain(k_c.spikes.transpose(-1, -2), k_c.weight)
            # the 1/sqrt(d) scaling rides on the queries' d(t): no extra pass over the scores
            scaled_q = SpikeTrain(q_c.spikes, q_c.weight * attention.scaling)
            scores = spike_matmul(scaled_q, k_t)
            probs = accumulate_difference(scores, softmax)
            p_train = self._fire(i, "probs", integrate(probs))
            outputs.append(integrate(spike_matmul(p_train, v_c)))
            if self.counter is not None:
                self.counter.matmul(_key(i, "q·k"), q_c, k_c, visible, keys_first=True)
                self.counter.elementwise(
                    _key(i, "softmax"), "softmax", float(visible.sum()) * batch * size, t
                )
                self.counter.matmul(_key(i, "p·v"), p_train, v_c, visible, keys_first=False)
        return torch.cat(outputs, 1)

    # -- MLP and head ----------------------------------------------------------------------

    def _mlp(self, i: int, layer: nn.Module, residual: Tensor) -> Tensor:
        adapter = self.adapter
        norm = adapter.part(layer, adapter.post_attention_norm)
        gate_proj, up_proj = adapter.part(layer, adapter.gate), adapter.part(layer, adapter.up)
        down_proj, act_fn = adapter.part(layer, adapter.down), adapter.act_fn(layer)
        scale = None if self.spiking.silu_scales is None else self.spiking.silu_scales[i]
        rotation = self.spiking.down_rotation

        def silu(z: Tensor) -> Tensor:
            a = act_fn(z)
            return a if scale is None else a / scale.to(a.device, a.dtype)

        out = torch.empty_like(residual)
        for start in range(0, residual.shape[2], self.token_chunk):
            part = residual[:, :, start : start + self.token_chunk]
            train = self._fire(i, "gate_up", integrate(self._norm(i, norm, part)))
            self._count_linear(i, _op(adapter.gate), train, gate_proj)
            self._count_linear(i, _op(adapter.up), train, up_proj)
            gate = linear_steps(train, gate_proj)
            if self.counter is not None:
                self.counter.elementwise(_key(i, "silu"), "silu", gate[0].numel(), len(gate))
            a = self._fire(i, "silu", integrate(accumulate_difference(gate, silu)))
            b = self._fire(i, "up", integrate(linear_steps(train, up_proj)))
            if self.counter is not None:
                self.counter.product(_key(i, "silu·up"), a, b)
            product = integrate(spike_product(a, b))
            if rotation is not None:
                product = rotation(product)
                if self.counter is not None:
                    self.counter.rotation(_key(i, "rotation"), product.numel(), rotation)
            down = self._fire(i, "down", product)
            self._count_linear(i, _op(adapter.down), down, down_proj)
            out[:, :, start : start + self.token_chunk] = linear_steps(down, down_proj)
        return out

    def _head(self, residual: Tensor) -> Tensor:
        head = self.adapter.module(self.model, self.adapter.lm_head)
        norm = self.adapter.module(self.model, self.adapter.final_norm)
        coded = LM_HEAD in self.rows
        logits = []
        for start in range(0, residual.shape[2], self.token_chunk):
            x = integrate(self._norm(None, norm, residual[:, :, start : start + self.token_chunk]))
            if not coded:
                if self.counter is not None:
                    self.counter.analog_linear(_key(None, "lm_head"), x[..., 0].numel(), head)
                logits.append(head(x))
                continue
            train = self._fire(None, "lm_head", x)
            self._count_linear(None, "lm_head", train, head)
            part = head.bias.expand(x.shape[:-1] + (-1,)).clone() if head.bias is not None else 0
            for step in train.steps():  # one step at a time: never [T, tokens, vocab]
                part = part + F.linear(step, head.weight)
            logits.append(part)
        return torch.cat(logits, 1)

    # -- counting --------------------------------------------------------------------------

    def _count_linear(self, i: int | None, name: str, train: SpikeTrain, linear: nn.Linear):
        if self.counter is not None:
            self.counter.linear(_key(i, name), train, linear)

    def _count_residual(self, i: int, residual: Tensor) -> None:
        if self.counter is not None:
            self.counter.residual(_key(i, "residual"), residual[0].numel(), self.timesteps)


def _key(layer: int | None, op: str) -> tuple[str, str]:
    return ("head" if layer is None else f"layers.{layer}", op)


def _op(path: str) -> str:
    """The counting name of a linear: its module name (``self_attn.q_proj`` → ``q_proj``)."""
    return path.rsplit(".", 1)[-1]
