"""The spike-level simulator: a converted model run as its spiking network (Fig. 2 right).

Each neuron integrates the increments it receives, then fires T spike tensors
(``trains.encode``). Linear layers consume spikes step by step (``ops.linear_steps``) and the
residual stream carries T per-step increments; RMSNorms (pre-, post- and q/k norms), softmax
and the MLP activation (SiLU, GELU) run by accumulate–difference (T evaluations of φ), Q·Kᵀ
and P·V by Eq. 51 and act·up by Eq. 55 (``ops``: each operator hands its consumer the sums it
reads — running sums to φ, totals to a neuron; a post-norm hands the residual stream its T
differences). The block's structure (which norms, fused projections, per-layer RoPE tables)
is the adapter's. The
weights, rotations and prefix are the artifact's, read from the same (rotated) transformers
modules the fast path runs, so the two differ only by floating-point summation order.

Memory is bounded by chunking: the MLP runs ``token_chunk`` tokens at a time (peak
[T, chunk, intermediate] increments); the lm_head runs ``HEAD_CHUNK`` tokens at a time and adds
each step's product into the logits in place (never [T, tokens, vocab]); attention runs a block
of query rows at a time, as many as keep B·G·rows·S_kv (G query heads per KV head) under
``attention_elements``, and keeps one step's scores at a time (never [T, ..., S, S_kv]). The
logits [B, S, vocab] and the residual stream [T, B, S, hidden] are the largest tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from phasecode.conversion.convert import SpikingModel
from phasecode.models.adapters import ATTENTION, MLP, adapter_for
from phasecode.models.sites import LM_HEAD, site_name
from phasecode.simulation.cache import SpikeCache
from phasecode.simulation.counting import ELEMENTWISE_MACS, Counter
from phasecode.simulation.ops import (
    accumulate_difference,
    difference_steps,
    linear_steps,
    running_sums,
    running_values,
    spike_matmul,
    spike_product,
    train_value,
)
from phasecode.simulation.trains import SpikeTrain, encode, integrate

TOKEN_CHUNK = 128  # tokens per MLP pass: bounds [T, chunk, intermediate]
HEAD_CHUNK = 512  # tokens per lm_head pass: the rows of each step's [rows, hidden]·[hidden, vocab]
ATTENTION_ELEMENTS = 1 << 18  # scores per attention block: 2 MiB a float64 buffer


class SpikingSimulator:
    """Runs a ``SpikingModel`` timestep by timestep; optionally counts every operation."""

    def __init__(
        self,
        spiking: SpikingModel,
        mask_strength: int = 0,
        counter: Counter | None = None,
        token_chunk: int = TOKEN_CHUNK,
        attention_elements: int = ATTENTION_ELEMENTS,
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
        if self.counter is not None and self.adapter.scales_embedding(self.model):
            self.counter.both_mac(("embed", "scale"), embeddings.numel(), embeddings.numel())
        positions = torch.arange(cache.length, cache.length + length, device=input_ids.device)
        tables = self.adapter.rotary_tables(self.model, embeddings, positions[None])
        residual = embeddings.new_zeros((self.timesteps,) + embeddings.shape)
        residual[0] = embeddings  # the embedding arrives at once: a one-step increment
        for i, layer in enumerate(self.layers):
            out = self._attention(i, layer, residual, tables[i], positions, cache)
            residual += self._branch_output(i, layer, ATTENTION, out)
            self._count_residual(i, residual)
            residual += self._branch_output(i, layer, MLP, self._mlp(i, layer, residual))
            self._count_residual(i, residual)
        cache.length += length
        return self._head(residual)

    def _branch_input(self, i: int, layer: nn.Module, branch: str, residual: Tensor) -> Tensor:
        """What a branch's first neuron integrates: the pre-norm of the residual stream by
        accumulate–difference, or (no pre-norm, OLMo 2) the stream itself."""
        norm = self.adapter.pre_norm(branch)
        if norm is None:
            return integrate(residual)
        return self._norm(i, self.adapter.part(layer, norm), residual)

    def _branch_output(self, i: int, layer: nn.Module, branch: str, increments: Tensor) -> Tensor:
        """The increments a branch adds to the residual stream: its writer's, or after a
        post-norm (Gemma 3, OLMo 2) that norm's by accumulate–difference, step by step (each
        O(t) an increment), rotated online by the residual rotation on a rotated model."""
        norm = self.adapter.post_norm(branch)
        if norm is None:
            return increments
        if self.counter is not None:
            self.counter.elementwise(
                _key(i, "post-norm"), "rmsnorm", increments[0].numel(), self.timesteps
            )
        out = difference_steps(running_sums(increments), self.adapter.part(layer, norm))
        rotation = self.spiking.prepared.post_norm_rotation
        if rotation is None:
            return out
        if self.counter is not None:
            self.counter.rotation(_key(i, "post-norm rotation"), out.numel(), rotation)
        return rotation(out)

    # -- sites -----------------------------------------------------------------------------

    def _fire(self, layer: int | None, kind: str, x: Tensor) -> SpikeTrain:
        name = site_name(layer, kind)
        train = encode(x, self.rows[name], self.mask_strength)
        if self.counter is not None:
            self.counter.site(_key(layer, kind), train)
        return train

    def _norm(self, layer: int | None, norm: nn.Module, increments: Tensor) -> Tensor:
        """RMSNorm of the residual stream by accumulate–difference, integrated by its reader."""
        if self.counter is not None:
            self.counter.elementwise(
                _key(layer, "rmsnorm"), "rmsnorm", increments[0].numel(), self.timesteps
            )
        return accumulate_difference(running_sums(increments), norm)

    # -- attention -------------------------------------------------------------------------

    def _attention(
        self, i: int, layer: nn.Module, residual: Tensor, cos_sin, positions, cache: SpikeCache
    ) -> Tensor:
        adapter = self.adapter
        attention = adapter.part(layer, adapter.attention)
        train = self._fire(i, "qkv", self._branch_input(i, layer, ATTENTION, residual))
        batch, length, _ = train.spikes.shape[1:]
        steps = train.steps()
        projections = adapter.attention_projections(self.model, layer)
        names = adapter.projection_names(ATTENTION)
        norms = (*adapter.qk_norms(layer), None)
        heads = []
        for kind, name, projection, norm in zip("qkv", names, projections, norms, strict=True):
            self._count_linear(i, _op(name), train, projection)
            out = self._head_norm(i, kind, norm, linear_steps(steps, projection))
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
        return linear_steps(o_train.steps(), o_proj)

    def _head_norm(self, i: int, kind: str, norm: nn.Module | None, increments: Tensor) -> Tensor:
        """A q/k/v projection's output [B, S, H·D] as the next neuron integrates it: the sum
        of its increments, or after the q/k norm (per head, or over the whole projection as
        in OLMo 2) by accumulate–difference."""
        if norm is None:
            return integrate(increments)
        width = norm.weight.numel()
        if self.counter is not None:
            self.counter.elementwise(
                _key(i, f"{kind}_norm"), "rmsnorm", increments[0].numel(), self.timesteps
            )

        def per_head(total: Tensor) -> Tensor:
            return norm(total.view(*total.shape[:-1], -1, width)).flatten(-2)

        return accumulate_difference(running_sums(increments), per_head)

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
        """P·V for all heads, [B, H, S, head_dim]: per KV head, its query heads' rows stacked
        (one matmul per step, as GQA shares the keys), a block of query rows at a time, and of
        the keys only the columns some query of the block sees (the rest are masked: their
        probability is exactly 0, which fires nothing and adds nothing)."""
        t, batch, heads, length, depth = q.spikes.shape
        kv_heads, keys = k.spikes.shape[2], visible.shape[1]
        groups = heads // kv_heads
        most = max(1, self.attention_elements // (batch * groups * keys))
        rows = math.ceil(length / math.ceil(length / most))  # balanced, at most ``most`` each
        dtype = q.weight.dtype
        additive = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
        additive.masked_fill_(~visible, torch.finfo(dtype).min)
        q_sums = running_values(q)  # [T, B, H, S, d]
        k_sums = running_values(k).transpose(-1, -2)  # [T, B, H_kv, d, S_kv]
        v_value = train_value(v)  # [B, H_kv, S_kv, d]
        out = q_sums.new_empty((batch, heads, length, depth))
        for start in range(0, length, rows):
            block = slice(start, min(start + rows, length))
            size = block.stop - start
            seen = visible[block].any(0).nonzero()
            columns = slice(int(seen[0]), int(seen[-1]) + 1)
            mask = additive[block, columns].repeat(groups, 1)  # [G·rows, seen]
            # the whole key row, for the softmax's float32 sums to run as the fast path's
            row = additive.new_full((batch, groups * size, keys), torch.finfo(dtype).min)
            softmax = partial(
                _softmax, scaling=attention.scaling, additive=mask, row=row, columns=columns
            )
            for kv in range(kv_heads):
                group = slice(kv * groups, (kv + 1) * groups)
                q_block = q_sums[:, :, group, block].reshape(t, batch, groups * size, depth)
                scores = spike_matmul(q_block, k_sums[:, :, kv, :, columns])
                probs = accumulate_difference(scores, softmax)
                p_train = self._fire_probs(i, probs.reshape(batch, groups, size, -1), columns, keys)
                # Eq. 51 summed over T (the o neuron integrates it)
                p_value = train_value(p_train).view(batch, groups * size, -1)
                pv = p_value @ v_value[:, kv, columns]
                out[:, group, block] = pv.view(batch, groups, size, depth)
                if self.counter is not None:
                    self._count_attention(i, (q, k, v, p_train), kv, groups, block, visible)
        return out

    def _fire_probs(self, i: int, probs: Tensor, columns: slice, keys: int) -> SpikeTrain:
        """One block's probability neurons on the key ``columns`` its queries see; counted as
        the block's every neuron, the masked ones included (they run, and stay silent)."""
        train = encode(probs, self.rows[site_name(i, "probs")], self.mask_strength)
        if self.counter is not None:
            spikes = train.spikes.new_zeros(train.spikes.shape[:-1] + (keys,))
            spikes[..., columns] = train.spikes
            self.counter.site(_key(i, "probs"), SpikeTrain(spikes, train.weight))
        return train

    def _count_attention(
        self,
        i: int,
        trains: tuple[SpikeTrain, ...],
        kv: int,
        groups: int,
        block: slice,
        visible: Tensor,
    ) -> None:
        """One block's Q·Kᵀ, softmax and P·V counts: KV head ``kv``'s query heads, query rows
        ``block`` (counts add up over blocks)."""
        q, k, v, p_train = trains
        q_block = SpikeTrain(q.spikes[:, :, kv * groups : (kv + 1) * groups, block], q.weight)

        def per_query_head(train: SpikeTrain) -> SpikeTrain:  # the KV head, seen by each
            spikes = train.spikes[:, :, kv : kv + 1].expand(-1, -1, groups, -1, -1)
            return SpikeTrain(spikes, train.weight)

        rows, batch = visible[block], q.spikes.shape[1]
        self.counter.matmul(_key(i, "q·k"), q_block, per_query_head(k), rows, keys_first=True)
        self.counter.elementwise(
            _key(i, "softmax"), "softmax", float(rows.sum()) * batch * groups, q.timesteps
        )
        self.counter.matmul(_key(i, "p·v"), p_train, per_query_head(v), rows, keys_first=False)

    # -- MLP and head ----------------------------------------------------------------------

    def _mlp(self, i: int, layer: nn.Module, residual: Tensor) -> Tensor:
        adapter = self.adapter
        gate_proj, up_proj = adapter.mlp_projections(layer)
        gate_name, up_name = adapter.projection_names(MLP)
        down_proj, act_fn = adapter.part(layer, adapter.down), adapter.act_fn(layer)
        kind = adapter.activation_kind(self.model.config)
        scale = None if self.spiking.silu_scales is None else self.spiking.silu_scales[i]
        rotation = self.spiking.down_rotation

        def activation(z: Tensor) -> Tensor:
            a = act_fn(z)
            return a if scale is None else a / scale.to(a.device, a.dtype)

        out = torch.empty_like(residual)
        for start in range(0, residual.shape[2], self.token_chunk):
            part = residual[:, :, start : start + self.token_chunk]
            train = self._fire(i, "gate_up", self._branch_input(i, layer, MLP, part))
            self._count_linear(i, _op(gate_name), train, gate_proj)
            self._count_linear(i, _op(up_name), train, up_proj)
            steps = train.steps()
            gate = linear_steps(steps, gate_proj)
            if self.counter is not None:
                self.counter.elementwise(_key(i, kind), kind, gate[0].numel(), len(gate))
            a = self._fire(i, "silu", accumulate_difference(running_sums(gate), activation))
            b = self._fire(i, "up", integrate(linear_steps(steps, up_proj)))
            if self.counter is not None:
                self.counter.product(_key(i, f"{kind}·up"), a, b)
            product = spike_product(a, b)
            if rotation is not None:
                product = rotation(product)
                if self.counter is not None:
                    self.counter.rotation(_key(i, "rotation"), product.numel(), rotation)
            down = self._fire(i, "down", product)
            self._count_linear(i, _op(adapter.down), down, down_proj)
            out[:, :, start : start + self.token_chunk] = linear_steps(down.steps(), down_proj)
        return out

    def _head(self, residual: Tensor) -> Tensor:
        """Logits [B, S, vocab], accumulated step by step in place (never [T, tokens, vocab]),
        ``HEAD_CHUNK`` tokens at a time: each step's product then has as many rows as the
        ANN's, which keeps the matmul as efficient."""
        head = self.adapter.module(self.model, self.adapter.lm_head)
        norm = self.adapter.module(self.model, self.adapter.final_norm)
        coded = LM_HEAD in self.rows
        logits = residual.new_zeros(residual.shape[1:-1] + (head.out_features,))
        for start in range(0, residual.shape[2], HEAD_CHUNK):
            block = slice(start, start + HEAD_CHUNK)
            x = self._norm(None, norm, residual[:, :, block])
            if not coded:
                if self.counter is not None:
                    self.counter.analog_linear(_key(None, "lm_head"), x[..., 0].numel(), head)
                logits[:, block] = head(x)
                continue
            train = self._fire(None, "lm_head", x)
            self._count_linear(None, "lm_head", train, head)
            steps = train.steps()
            for row, part in enumerate(logits[:, block]):  # one sequence at a time: 2-D products
                if head.bias is not None:
                    part += head.bias
                for step in steps[:, row]:
                    part.addmm_(step, head.weight.t())
        return logits

    # -- counting --------------------------------------------------------------------------

    def _count_linear(self, i: int | None, name: str, train: SpikeTrain, linear: nn.Linear):
        if self.counter is not None:
            self.counter.linear(_key(i, name), train, linear)

    def _count_residual(self, i: int, residual: Tensor) -> None:
        if self.counter is not None:
            self.counter.residual(_key(i, "residual"), residual[0].numel(), self.timesteps)


def _softmax(
    scores: Tensor, scaling: float, additive: Tensor, row: Tensor, columns: slice
) -> Tensor:
    """φ of the attention scores as the fast path (and transformers) computes it: scale, add the
    mask, softmax in float32. ``scores`` are the seen ``columns`` of ``row``, whose other columns
    hold the mask's minimum (what the fast path's masked scores are), so the softmax runs over
    the whole row in the fast path's order; returns the seen columns. Scales and masks in place:
    each step's scores are read once."""
    row[..., columns] = scores.mul_(scaling).add_(additive)
    return torch.softmax(row, dim=-1, dtype=torch.float32)[..., columns].to(scores.dtype)


def _key(layer: int | None, op: str) -> tuple[str, str]:
    return ("head" if layer is None else f"layers.{layer}", op)


def _op(path: str) -> str:
    """The counting name of a linear: its module name (``self_attn.q_proj`` → ``q_proj``)."""
    return path.rsplit(".", 1)[-1]
