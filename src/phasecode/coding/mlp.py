"""Coded MLP: SiLU(gate(x))·up(x) → down_proj with its four neurons as one compiled call.

The fast path used to make one compiled-kernel call per neuron around eager linears: four calls
per layer here, each paying torch.compile's dispatch (~150 µs of guards and wrappers on a CPU),
which dominates the short forwards of zero-shot evaluation. One compiled function per MLP
makes one call and lets the compiler fuse the SiLU, the balancing scale, the neurons and the
product into the loops between the GEMMs.

Exactness against the eager ``conversion.surgery.spiking_mlp_forward``: the same operations in
the same dtypes and order; the neurons are the same IEEE steps (``_fused_site_value``) and the
rotation's butterflies the same additions, but the compiler's SiLU may round its exp
differently from ATen's, so a gate value within that rounding of a threshold can fire
differently. The coded values otherwise agree bit for bit (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional

from phasecode.cache import kernels
from phasecode.cache.kernels import mark_dynamic
from phasecode.coding.neuron import code_inside


@torch.no_grad()
def coded_mlp(
    x: Tensor,
    weights: tuple[Tensor | None, ...],
    activation: Callable[[Tensor], Tensor],
    silu_scale: Tensor | None,
    rotation: tuple[Callable[[Tensor, Tensor], Tensor], Tensor] | None,
    neurons: tuple[tuple | None, ...],
    compiled: bool = True,
) -> Tensor:
    """down(SN_down(R(SN_silu(act(gate(x̂))/s) · SN_up(up(x̂))))) with x̂ = SN_gate_up(x).

    ``weights``: (gate W, gate b, up W, up b, down W, down b), biases may be None;
    ``neurons``: the gate_up, silu, up and down sites as ``coding.neuron.fused_arguments``;
    ``rotation``: the online down_proj rotation R as ``OnlineRotation.traceable`` or None."""
    scale = None if silu_scale is None else silu_scale.to(x.device, x.dtype)
    run = kernels.compiled(_mlp, dynamic=None) if compiled else _mlp
    rows = mark_dynamic(x.reshape(-1, x.shape[-1]), 0)  # tokens: any number
    out = run(rows, *weights, activation, scale, rotation, *neurons)
    return out.view(*x.shape[:-1], out.shape[-1])


def _mlp(
    x: Tensor,
    gate_w: Tensor,
    gate_b: Tensor | None,
    up_w: Tensor,
    up_b: Tensor | None,
    down_w: Tensor,
    down_b: Tensor | None,
    activation: Callable[[Tensor], Tensor],
    scale: Tensor | None,
    rotation: tuple[Callable[[Tensor, Tensor], Tensor], Tensor] | None,
    gate_up: tuple | None,
    silu: tuple | None,
    up: tuple | None,
    down: tuple | None,
) -> Tensor:
    """``coded_mlp`` on token rows [N, hidden]: the operations of ``spiking_mlp_forward``."""
    x = code_inside(x, gate_up)
    a = activation(functional.linear(x, gate_w, gate_b))
    if scale is not None:
        a = a / scale
    product = code_inside(a, silu) * code_inside(functional.linear(x, up_w, up_b), up)
    if rotation is not None:
        rotate, dense = rotation
        product = rotate(product, dense)
    return functional.linear(code_inside(product, down), down_w, down_b)
