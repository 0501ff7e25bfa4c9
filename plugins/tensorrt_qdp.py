"""TensorRT Quickly Deployable Plugins `trtkit::moe` and `trtkit::attention`, for raw TensorRT engines
built outside TensorRT-LLM. Importing this module registers them (it imports tensorrt, torch, triton);
nothing else in trtkit imports it. Needs TensorRT >= 10.9 (the first with `tensorrt.plugin.aot_impl` and
`KernelLaunchParams`), not 10.14.* (broken Quickly Deployable Plugins: `plugins.registry.TENSORRT_BROKEN`).
Known open TensorRT bug (NVIDIA/TensorRT#4849, 11.1 and 11.2.1): an engine with an AOT plugin keeps GPU
memory each time the input shapes change; B, T and S of trtkit::attention vary. Exercised on GPU nodes
only: CI machines cannot install TensorRT. Checked by reading
tensorrt.plugin's sources (TensorRT OSS, 10.9 and 11.1): `constant_value()` is a method; a BF16
`trtp.Tensor` refuses `__cuda_array_interface__`, so BF16 tensors are wrapped here by hand (`_torch`).

    import plugins.tensorrt_qdp
    import tensorrt.plugin as trtp
    out = network.add_plugin(trtp.op.trtkit.attention(q, k, v, sinks, sm_scale=0.125,
                                                      sliding_window=128, q_start=0), aot=True)

attention: q [B, T, Hq, D], k/v [B, S, Hkv, D] (BF16 or FP16, dense), sinks [Hq] FP32 -> [B, T, Hq, D].
    Attributes sm_scale, sliding_window (0: full causal attention; TensorRT attributes have no None)
    and q_start. Ahead-of-time implementation: `attn_prefill_kernel` compiled to PTX at build time
    and launched by TensorRT (no Python at run time); Hq, Hkv, D and the attributes are baked in, and
    the PTX entry takes exactly the pointers and scalars TensorRT passes (`plugins.attention.aot`,
    compiled and assembled for sm_90 and sm_100 in the CPU tests).
    A just-in-time implementation (the Triton launcher on TensorRT's stream) serves the same op.
moe: x [N, H] BF16, router logits [N, E] BF16, then per projection (gate_up, down) the packed FP4 codes
    [E, out, in/2] UINT8 (input-fastest, the layout the kernel decodes fastest; MXFP4 blocks flattened),
    block scales [E, out, S >= in/group] UINT8 (E4M3 bytes for NVFP4, E8M0 for MXFP4; pad rows to a
    multiple of 16 bytes, e.g. 192 for gpt-oss's 180, so the kernel pipelines them), global scale [1]
    FP32 (NVFP4; ignored for MXFP4) and bias [E, out] BF16 -> [N, H] BF16. Attributes weight_format
    ("nvfp4" | "mxfp4"), top_k, swiglu_limit, swiglu_alpha. Just-in-time implementation only: the MoE
    is four or five kernels with scratch buffers (routing and sorting, two grouped GEMMs, combine), and
    an AOT plugin launches exactly one kernel without workspace.
"""

# No `from __future__ import annotations`: tensorrt.plugin reads the annotations (TensorDesc = input).
import tensorrt as trt
import tensorrt.plugin as trtp
import torch

from plugins.attention import aot
from plugins.attention import fused as attention_fused
from plugins.moe.fused import fused_moe
from plugins.moe.tensors import MoeTensors, ProjectionTensors, WeightFormat

_TRT_DTYPES = {trt.bfloat16: "bf16", trt.float16: "fp16"}


def _constant(expr, what: str) -> int:
    if not expr.is_constant:
        raise ValueError(f"trtkit::attention: {what} must be a build-time constant (only B, T, S may vary)")
    return int(expr.constant_value())


class _Int16View:
    """A BF16 trtp.Tensor's memory as int16 through __cuda_array_interface__ (version 3), which
    tensorrt.plugin refuses for BF16 itself; strides in bytes, no stream to wait for (same stream)."""

    def __init__(self, t: trtp.Tensor):
        self.__cuda_array_interface__ = {
            "shape": tuple(t.shape), "typestr": "<i2", "data": (t.data_ptr, False),
            "strides": tuple(2 * s for s in t.strides), "stream": None, "version": 3}


def _torch(t: trtp.Tensor) -> torch.Tensor:
    """The TensorRT tensor as a torch view of the same memory (no copy)."""
    if t.dtype == trt.bfloat16:
        return torch.as_tensor(_Int16View(t), device="cuda").view(torch.bfloat16)
    return torch.as_tensor(t, device="cuda")


# ---- attention ------------------------------------------------------------------------------------
@trtp.register("trtkit::attention")
def attention_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, sinks: trtp.TensorDesc,
                   sm_scale: float, sliding_window: int, q_start: int) -> trtp.TensorDesc:
    return q.like()


@trtp.autotune("trtkit::attention")
def attention_autotune(q, k, v, sinks, outputs) -> list[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination("BF16|FP16, BF16|FP16, BF16|FP16, FP32, BF16|FP16")]


@trtp.impl("trtkit::attention")
def attention_impl(q, k, v, sinks, sm_scale: float, sliding_window: int, q_start: int, outputs,
                   stream: int) -> None:
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        out = attention_fused.attention(_torch(q), _torch(k), _torch(v), _torch(sinks), sm_scale=sm_scale,
                                        sliding_window=sliding_window or None, q_start=q_start)
        _torch(outputs[0]).copy_(out)


# tensorrt.plugin passes every attribute positionally in registration order: keep all three, in order
@trtp.aot_impl("trtkit::attention")
def attention_aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, sinks: trtp.TensorDesc,
                  sm_scale: float, sliding_window: int, q_start: int, outputs: tuple[trtp.TensorDesc],
                  tactic: int) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymExprs]:
    """attn_prefill_kernel's PTX (`plugins.attention.aot`: its entry takes exactly the pointers and the
    int32 scalars TensorRT passes); the scalars as symbolic expressions of the input shapes."""
    b, t, hq, d = q.shape_expr
    s, hkv = k.shape_expr[1], k.shape_expr[2]
    hq_, hkv_, d_ = _constant(hq, "Hq"), _constant(hkv, "Hkv"), _constant(d, "head_dim")
    major, minor = torch.cuda.get_device_capability()
    kernel = aot.compile_prefill(_TRT_DTYPES[q.dtype], hq_, hkv_, d_, sliding_window > 0,
                                 ptx_version=aot.driver_ptx_version(10 * major + minor))
    scalars = aot.prefill_scalars(t, s, q_start, sliding_window, sm_scale, hq_, hkv_, d_)
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(t, attention_fused.PREFILL_CONFIG.block_m)
    launch.grid_y = b * hq_
    launch.block_x = kernel.threads
    launch.shared_mem = kernel.shared
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in scalars])
    return kernel.name, kernel.ptx, launch, extra


# ---- MoE ------------------------------------------------------------------------------------------
@trtp.register("trtkit::moe")
def moe_desc(x: trtp.TensorDesc, logits: trtp.TensorDesc, gate_up: trtp.TensorDesc,
             gate_up_scale: trtp.TensorDesc, gate_up_global: trtp.TensorDesc, gate_up_bias: trtp.TensorDesc,
             down: trtp.TensorDesc, down_scale: trtp.TensorDesc, down_global: trtp.TensorDesc,
             down_bias: trtp.TensorDesc, weight_format: str, top_k: int, swiglu_limit: float,
             swiglu_alpha: float) -> trtp.TensorDesc:
    return x.like()


@trtp.autotune("trtkit::moe")
def moe_autotune(x, logits, gate_up, gate_up_scale, gate_up_global, gate_up_bias, down, down_scale,
                 down_global, down_bias, outputs) -> list[trtp.AutoTuneCombination]:
    return [trtp.AutoTuneCombination("BF16, BF16, UINT8, UINT8, FP32, BF16, UINT8, UINT8, FP32, BF16, BF16")]


def _projection(fmt: WeightFormat, packed: torch.Tensor, scale: torch.Tensor,
                global_scale: torch.Tensor) -> ProjectionTensors:
    """The plugin's K-major [E, out, in/2] bytes as the logical tensors plugins.moe takes (no copy); the
    scale rows may be padded past in/group (a multiple of 16 bytes loads pipelined: BENCHMARKS.md)."""
    e, out, half = packed.shape
    group = 32 if fmt is WeightFormat.MXFP4 else 16
    if scale.shape[-1] < 2 * half // group:
        raise ValueError(f"trtkit::moe: block scales {tuple(scale.shape)} have fewer than in/{group} = "
                         f"{2 * half // group} bytes a row")
    scale = scale[..., :2 * half // group]
    if fmt is WeightFormat.MXFP4:
        return ProjectionTensors(fmt, packed.view(e, out, half // 16, 16), scale)
    return ProjectionTensors(fmt, packed.mT, scale.view(torch.float8_e4m3fn).mT, global_scale.reshape(()))


@trtp.impl("trtkit::moe")
def moe_impl(x, logits, gate_up, gate_up_scale, gate_up_global, gate_up_bias, down, down_scale, down_global,
             down_bias, weight_format: str, top_k: int, swiglu_limit: float, swiglu_alpha: float, outputs,
             stream: int) -> None:
    fmt = WeightFormat(weight_format)
    if fmt is WeightFormat.BF16:
        raise ValueError("trtkit::moe TensorRT plugin: weight_format must be nvfp4 or mxfp4")
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        t = MoeTensors(_projection(fmt, _torch(gate_up), _torch(gate_up_scale), _torch(gate_up_global)),
                       _torch(gate_up_bias),
                       _projection(fmt, _torch(down), _torch(down_scale), _torch(down_global)), _torch(down_bias))
        out = fused_moe(_torch(x), _torch(logits), t, top_k, swiglu_limit, swiglu_alpha)
        _torch(outputs[0]).copy_(out)
