"""The torch custom ops `trtkit::moe` and `trtkit::attention`. Importing this module registers them
(nothing else in `plugins` does): `import plugins.ops` then `torch.ops.trtkit.moe(...)`.

Each op has three implementations: the plain-torch reference (CPU and any other device), the Triton
kernels on CUDA (`plugins.moe.fused`, `plugins.attention.fused`; triton imported on first CUDA call; the
nvfp4_frag storage runs a Gluon kernel, `plugins.moe.gluon_frag`),
and a fake (meta) one that gives the output's shape and dtype so the ops trace under torch.compile.

`moe` and `attention` below have the reference functions' signatures (plugins.moe.reference.moe,
plugins.attention.reference.attention) and call the ops, so a model swaps them in by name.
"""

import torch
import torch.nn.functional as F

from plugins.attention.reference import attention as reference_attention
from plugins.attention.reference import check_attention
from plugins.moe.experts import ExpertWeights, Router
from plugins.moe.tensors import (
    MoeTensors,
    ProjectionTensors,
    WeightFormat,
    check_moe_inputs,
    reference_moe_from_logits,
)

NAMESPACE = "trtkit"
OPS = ("moe", "attention")


def _moe_tensors(gate_up, gate_up_scale, gate_up_global_scale, gate_up_bias, down, down_scale,
                 down_global_scale, down_bias, weight_format: str) -> MoeTensors:
    try:
        fmt = WeightFormat(weight_format)
    except ValueError:
        raise ValueError(f"trtkit::moe: weight_format {weight_format!r} is not one of "
                         f"{[f.value for f in WeightFormat]}") from None
    return MoeTensors(ProjectionTensors(fmt, gate_up, gate_up_scale, gate_up_global_scale), gate_up_bias,
                      ProjectionTensors(fmt, down, down_scale, down_global_scale), down_bias)


@torch.library.custom_op(f"{NAMESPACE}::moe", mutates_args=())
def moe_op(x: torch.Tensor, router_logits: torch.Tensor, gate_up: torch.Tensor,
           gate_up_scale: torch.Tensor | None, gate_up_global_scale: torch.Tensor | None,
           gate_up_bias: torch.Tensor, down: torch.Tensor, down_scale: torch.Tensor | None,
           down_global_scale: torch.Tensor | None, down_bias: torch.Tensor, weight_format: str,
           top_k: int, swiglu_limit: float, swiglu_alpha: float) -> torch.Tensor:
    """gpt-oss MoE: x [N, H], router_logits [N, E], experts in `weight_format` (bf16|mxfp4|nvfp4|nvfp4_spread|nvfp4_frag, the
    layouts of plugins.moe.tensors) -> [N, H] in x's dtype. Reference implementation."""
    t = _moe_tensors(gate_up, gate_up_scale, gate_up_global_scale, gate_up_bias, down, down_scale,
                     down_global_scale, down_bias, weight_format)
    check_moe_inputs(x, router_logits, t, top_k)
    out = reference_moe_from_logits(x, router_logits, t.to_weights(), top_k, swiglu_limit, swiglu_alpha)
    return out.contiguous()


@moe_op.register_kernel("cuda")
def _moe_cuda(x, router_logits, gate_up, gate_up_scale, gate_up_global_scale, gate_up_bias, down,
              down_scale, down_global_scale, down_bias, weight_format, top_k, swiglu_limit, swiglu_alpha):
    from plugins.moe.fused import fused_moe

    t = _moe_tensors(gate_up, gate_up_scale, gate_up_global_scale, gate_up_bias, down, down_scale,
                     down_global_scale, down_bias, weight_format)
    return fused_moe(x, router_logits, t, top_k, swiglu_limit, swiglu_alpha)


@moe_op.register_fake
def _moe_fake(x, router_logits, gate_up, gate_up_scale, gate_up_global_scale, gate_up_bias, down,
              down_scale, down_global_scale, down_bias, weight_format, top_k, swiglu_limit, swiglu_alpha):
    t = _moe_tensors(gate_up, gate_up_scale, gate_up_global_scale, gate_up_bias, down, down_scale,
                     down_global_scale, down_bias, weight_format)
    check_moe_inputs(x, router_logits, t, top_k)
    return x.new_empty(x.shape)


@torch.library.custom_op(f"{NAMESPACE}::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, sm_scale: float,
                 sliding_window: int | None, q_start: int) -> torch.Tensor:
    """gpt-oss attention with sinks (plugins.attention.reference.attention). Reference implementation."""
    return reference_attention(q, k, v, sinks, sm_scale=sm_scale, sliding_window=sliding_window,
                               q_start=q_start).contiguous()


@attention_op.register_kernel("cuda")
def _attention_cuda(q, k, v, sinks, sm_scale, sliding_window, q_start):
    from plugins.attention.fused import attention as fused_attention

    return fused_attention(q, k, v, sinks, sm_scale=sm_scale, sliding_window=sliding_window,
                           q_start=q_start)


@attention_op.register_fake
def _attention_fake(q, k, v, sinks, sm_scale, sliding_window, q_start):
    check_attention(q, k, v, sinks, sm_scale, sliding_window, q_start)
    return q.new_empty(q.shape, dtype=v.dtype)


def moe_op_args(t: MoeTensors) -> tuple:
    """The expert arguments of trtkit::moe (gate_up .. weight_format) for one layer."""
    if t.gate_up.fmt is not t.down.fmt:
        raise ValueError(f"trtkit::moe: gate_up is {t.gate_up.fmt.value} but down is {t.down.fmt.value}; "
                         "both projections must share one format")
    gu, dn = t.gate_up, t.down
    return (gu.weight, gu.scale, gu.global_scale, t.gate_up_bias, dn.weight, dn.scale, dn.global_scale,
            t.down_bias, gu.fmt.value)


def moe(x: torch.Tensor, router: Router, experts: ExpertWeights, top_k: int, limit: float = 7.0,
        alpha: float = 1.702) -> torch.Tensor:
    """Drop-in for plugins.moe.reference.moe (without the expert-input hook) through trtkit::moe."""
    logits = F.linear(x, router.weight.to(x.dtype), router.bias.to(x.dtype))     # [N, E]
    return torch.ops.trtkit.moe(x, logits, *moe_op_args(MoeTensors.from_weights(experts)), top_k, limit,
                                alpha)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, *, sm_scale: float,
              sliding_window: int | None, q_start: int) -> torch.Tensor:
    """Drop-in for plugins.attention.reference.attention through trtkit::attention."""
    return torch.ops.trtkit.attention(q, k, v, sinks, sm_scale, sliding_window, q_start)
