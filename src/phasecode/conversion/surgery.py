"""Install site handlers into a transformers model without copying its modeling code.

- q/k/v input: a forward pre-hook on the attention module (its ``hidden_states`` argument);
- Q and K after RoPE, V, and the attention probabilities: an attention function registered in
  transformers' attention registry under ``phasecode`` (GQA-aware, coded before the KV heads
  are repeated; the eager reference, or for a ``Coder`` Q, K and V coded in one compiled call
  and the blocked, compiled coded attention of ``coding/attention.py``);
- o_proj input and lm_head input: forward pre-hooks;
- the MLP: an instance-level ``forward`` that codes the gate/up input, both operands of the
  act(gate)·up product and the (online-rotated) down_proj input; for a ``Coder``, the whole
  MLP is one compiled call (``coding/mlp.py``);
- after a post-norm (Gemma 3, OLMo 2) on a rotated model: a forward hook applying the
  residual rotation online (``models.rotation.post_norm_rotation``).
A ``Coder``'s fused calls run the same operations as the site-by-site path: fewer calls (each
compiled call costs ~150 µs of dispatch on a CPU) for the short forwards of zero-shot scoring.
Because every operation between sites is exact in the spiking network (linear layers, Eq. 51,
52-55), this model equals the spiking network summed over time: the fast equivalent path.
``remove()`` restores the model exactly, also when installation failed half-way.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from phasecode.coding.attention import coded_attention, coded_heads
from phasecode.coding.mlp import coded_mlp
from phasecode.conversion.handlers import Coder, Passthrough, SiteHandler
from phasecode.models.adapters import Adapter, adapter_for
from phasecode.models.hadamard import OnlineRotation
from phasecode.models.sites import LM_HEAD, site_name

ATTENTION_KEY = "phasecode"
_ABSENT = object()  # an instance attribute that was not there before the surgery
MLP_SITES = ("gate_up", "silu", "up", "down")


def spiking_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor | None]:
    """Attention with neurons on Q, K, V and the probabilities (App. B, Eq. 50-51).

    Under a ``Coder`` the probabilities are coded inside ``coding.attention.coded_attention``
    (blocked, causal blocks skipped, compiled; within float32 rounding of the reference); the
    plain prepared ANN (``Passthrough``) runs transformers' SDPA, again within rounding of the
    reference, and needs no head rotation ((QH)(KH)ᵀ = QKᵀ). Every other handler, which may
    look at the probabilities, and float64 models (exact checks) run ``reference_attention``.
    """
    handler: SiteHandler = module.phasecode_handler
    fast = query.dtype != torch.float64
    if fast and isinstance(handler, Passthrough):
        mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
        kwargs["is_causal"] = False  # as the reference: no mask means none
        return sdpa_attention_forward(module, query, key, value, mask, dropout, scaling, **kwargs)
    rotation, layer = module.phasecode_head_rotation, module.layer_idx
    coder = fast and isinstance(handler, Coder)
    if coder:  # one compiled call for the head rotation and the three neurons
        neurons = tuple(handler.fused(site_name(layer, kind), query) for kind in ("q", "k", "v"))
        traceable = None if rotation is None else rotation.traceable(query.device, query.dtype)
        query, key, value = coded_heads(query, key, value, traceable, neurons, handler.compiled)
    else:
        if rotation is not None:  # per-head Hadamard after RoPE: (QH)(KH)ᵀ = QKᵀ
            query, key = rotation(query), rotation(key)
        query = handler(site_name(layer, "q"), query)
        key = handler(site_name(layer, "k"), key)
        value = handler(site_name(layer, "v"), value)
    neuron = handler.fused(site_name(layer, "probs"), query) if coder else None
    if neuron is not None:
        with torch.no_grad():
            out = coded_attention(
                query, key, value, attention_mask, scaling, neuron, handler.compiled
            )
        return out, None
    return reference_attention(module, handler, query, key, value, attention_mask, scaling)


def reference_attention(
    module: nn.Module,
    handler: SiteHandler,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
) -> tuple[Tensor, Tensor]:
    """Eager attention on coded Q, K, V: the S×L float32 softmax passed whole to the
    probabilities' handler. The definition the faster paths are checked against."""
    groups = module.num_key_value_groups
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = query @ key.transpose(2, 3) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = handler(site_name(module.layer_idx, "probs"), probs)
    out = (probs @ value).transpose(1, 2).contiguous()
    return out, probs


ALL_ATTENTION_FUNCTIONS.register(ATTENTION_KEY, spiking_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_KEY, eager_mask)


def spiking_mlp_forward(
    adapter: Adapter,
    layer_module: nn.Module,
    handler: SiteHandler,
    layer: int,
    down_rotation: OnlineRotation | None,
    silu_scale: Tensor | None,
    x: Tensor,
) -> Tensor:
    """act(gate(x))·up(x) → down_proj, with a neuron on every activation (Eq. 55).

    gate and up are the adapter's projections (row blocks of one fused linear on Phi-3); the
    activation is the model's own (SiLU, GELU). ``silu_scale`` (per channel) divides the
    activation's output when the product is balanced (its inverse is folded into up_proj, see
    ``conversion/balance.py``); act(·)/s is still an element-wise function, run by
    accumulate-difference like the activation itself. A ``Coder`` (not in float64, kept for
    exact checks) runs it as one call, ``coding.mlp.coded_mlp``."""
    gate, up = adapter.mlp_projections(layer_module)
    down = adapter.part(layer_module, adapter.down)
    activation = adapter.act_fn(layer_module)
    if isinstance(handler, Coder) and x.dtype != torch.float64:
        neurons = tuple(handler.fused(site_name(layer, kind), x) for kind in MLP_SITES)
        weights = tuple(t for part in (gate, up, down) for t in (part.weight, part.bias))
        rotation = None if down_rotation is None else down_rotation.traceable(x.device, x.dtype)
        return coded_mlp(x, weights, activation, silu_scale, rotation, neurons, handler.compiled)
    x = handler(site_name(layer, "gate_up"), x)
    a = activation(gate(x))
    if silu_scale is not None:
        a = a / silu_scale.to(a.device, a.dtype)
    a = handler(site_name(layer, "silu"), a)
    b = handler(site_name(layer, "up"), up(x))
    product = a * b
    if down_rotation is not None:
        product = down_rotation(product)
    return down(handler(site_name(layer, "down"), product))


class SpikingSurgery:
    """Routes every site of a model through ``handler``; use as a context manager or keep."""

    def __init__(
        self,
        model: nn.Module,
        handler: SiteHandler,
        down_rotation: OnlineRotation | None = None,
        lm_head: bool = True,
        silu_scales: Tensor | None = None,
        head_rotation: Callable[[Tensor], Tensor] | None = None,
        post_norm_rotation: OnlineRotation | None = None,
    ):
        self.model, self.handler = model, handler
        self.adapter: Adapter = adapter_for(model)
        self.down_rotation, self.lm_head = down_rotation, lm_head
        self.silu_scales, self.head_rotation = silu_scales, head_rotation
        self.post_norm_rotation = post_norm_rotation
        self._handles: list = []
        # each patched module with what its instance dict held before under the names set
        self._patched: list[tuple[nn.Module, dict]] = []
        self._previous_attention: tuple[str | None] | None = None  # set while installed

    def install(self) -> SpikingSurgery:
        try:
            self._install()
        except BaseException:
            self.remove()
            raise
        return self

    def _install(self) -> None:
        model, adapter, handler = self.model, self.adapter, self.handler
        self._previous_attention = (model.config._attn_implementation,)
        model.config._attn_implementation = ATTENTION_KEY
        for i, layer in enumerate(adapter.decoder_layers(model)):
            attention = adapter.part(layer, adapter.attention)
            self._patch(
                attention,
                phasecode_handler=handler,
                phasecode_head_rotation=self.head_rotation,
            )
            self._pre_hook(attention, _kwarg_site(handler, site_name(i, "qkv")), with_kwargs=True)
            self._pre_hook(adapter.part(layer, adapter.o), _arg_site(handler, site_name(i, "o")))
            mlp = adapter.part(layer, adapter.mlp)
            scale = None if self.silu_scales is None else self.silu_scales[i]
            self._patch(
                mlp,
                forward=partial(
                    spiking_mlp_forward, adapter, layer, handler, i, self.down_rotation, scale
                ),
            )
            if self.post_norm_rotation is not None:  # the residual rotation, after each post-norm
                for norm in adapter.post_norms:
                    self._post_hook(
                        adapter.part(layer, norm), _rotate_output(self.post_norm_rotation)
                    )
        if self.lm_head:
            head = adapter.module(model, adapter.lm_head)
            self._pre_hook(head, _arg_site(handler, LM_HEAD))

    def _pre_hook(self, module: nn.Module, fn, with_kwargs: bool = False) -> None:
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=with_kwargs))

    def _post_hook(self, module: nn.Module, fn) -> None:
        self._handles.append(module.register_forward_hook(fn))

    def _patch(self, module: nn.Module, **attributes) -> None:
        """Set instance attributes, remembering what was there (an accelerate hook's
        ``forward``, say) so that ``remove`` puts exactly that back."""
        self._patched.append((module, {n: module.__dict__.get(n, _ABSENT) for n in attributes}))
        for name, value in attributes.items():
            setattr(module, name, value)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for module, before in reversed(self._patched):
            for name, value in before.items():
                if value is _ABSENT:
                    module.__dict__.pop(name, None)
                else:
                    module.__dict__[name] = value
        if self._previous_attention is not None:
            self.model.config._attn_implementation = self._previous_attention[0]
        self._handles, self._patched, self._previous_attention = [], [], None

    def __enter__(self) -> SpikingSurgery:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()


def _rotate_output(rotation: OnlineRotation):
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return rotation(output)

    return hook


def _arg_site(handler: SiteHandler, site: str):
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (handler(site, args[0]), *args[1:])

    return hook


def _kwarg_site(handler: SiteHandler, site: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (handler(site, args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": handler(site, kwargs["hidden_states"])}

    return hook
