"""Launchers of the Triton attention kernels (`plugins.attention.triton_kernels`), same signature and
semantics as `plugins.attention.reference.attention`.

Two kernels: prefill (flash attention, one program per BLOCK_M queries of one head) and decode (all
T*G query rows of one KV head in one program, the cache split over programs, then a merge). `attention`
picks decode when T * G <= DECODE_MAX_ROWS. RoPE (YaRN) is applied before the kernel, as in the
reference: the cache holds rotated keys.

Supported: q [B, T, Hq, D], k/v [B, S, Hkv, D] with Hq % Hkv == 0, D a power of two in [16, 256],
float32/bfloat16/float16 (q, k, v one dtype), any strides with a unit last stride, sinks [Hq] any float
dtype, sliding_window None or >= 1, q_start + T <= S. Softmax in float32 (the reference computes it in
q's dtype, so bf16 results agree to bf16 precision).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from plugins.attention import triton_kernels as K
from plugins.attention.reference import check_attention

_TL_DTYPE = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}
DECODE_MAX_ROWS = 64   # T * G up to this many rows runs the decode kernel
MAX_SPLITS = 64


@dataclass(frozen=True)
class AttentionConfig:
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 3


INTERPRETER_PREFILL = AttentionConfig(16, 16)
PREFILL_CONFIG = AttentionConfig(64, 64, num_warps=4, num_stages=3)  # fastest of bench_gpu's sweep, H100
DECODE_BLOCK_N = 64


def f32_bits(x: float) -> int:
    """The bits of float32(x) as a signed int32 (how sm_scale reaches the kernels)."""
    return struct.unpack("<i", struct.pack("<f", x))[0]


def _check(q, k, v, sinks, sm_scale, sliding_window, q_start) -> None:
    """`check_attention`, then what the kernels add: one dtype, a power-of-two head_dim, unit last strides."""
    check_attention(q, k, v, sinks, sm_scale, sliding_window, q_start)
    d = q.shape[3]
    if q.dtype not in _TL_DTYPE or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"attention kernel: q, k, v must share one of {list(_TL_DTYPE)}, got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if d < 16 or d > 256 or d & (d - 1):
        raise ValueError(f"attention kernel: head_dim {d} must be a power of two in [16, 256]")
    for name, x in {"q": q, "k": k, "v": v}.items():
        if x.stride(-1) != 1:
            raise ValueError(f"attention kernel: {name} has stride {x.stride(-1)} on the head dimension; "
                             f"the kernels need 1 (pass {name}.contiguous())")


def _dot(q: torch.Tensor) -> tuple:
    if q.device.type != "cuda":  # the interpreter's dot wants float32 operands
        return tl.float32, "ieee"
    return _TL_DTYPE[q.dtype], "ieee" if q.dtype == torch.float32 else "tf32"


def _strides(*xs: torch.Tensor) -> list[int]:
    return [st for x in xs for st in x.stride()[:3]]


def attention_prefill(q, k, v, sinks, *, sm_scale: float, sliding_window: int | None, q_start: int,
                      config: AttentionConfig | None = None) -> torch.Tensor:
    b, t, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    cfg = config or (PREFILL_CONFIG if q.device.type == "cuda" else INTERPRETER_PREFILL)
    out = torch.empty_like(q)
    dot, precision = _dot(q)
    grid = (triton.cdiv(t, cfg.block_m), b * hq)
    K.attn_prefill_kernel[grid](
        q, k, v, sinks, t, s, q_start, sliding_window or 0, f32_bits(sm_scale), *_strides(q, k, v, out),
        out, HQ=hq, GROUP=hq // hkv, HEAD_DIM=d, HAS_WINDOW=sliding_window is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, DOT_DTYPE=dot, PRECISION=precision,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


def _num_splits(programs: int, span: int, block_n: int, device: torch.device) -> int:
    """Enough (b, kvh, split) programs to fill the GPU twice over, at least two key blocks each."""
    if device.type != "cuda":
        return min(4, max(1, triton.cdiv(span, 2 * block_n)))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(MAX_SPLITS, triton.cdiv(2 * sms, programs), triton.cdiv(span, 2 * block_n)))


def attention_decode(q, k, v, sinks, *, sm_scale: float, sliding_window: int | None, q_start: int,
                     num_splits: int | None = None, block_n: int | None = None) -> torch.Tensor:
    b, t, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    block_m = max(16, triton.next_power_of_2(t * g))
    block_n = block_n or (DECODE_BLOCK_N if q.device.type == "cuda" else 16)
    lo = max(0, q_start - sliding_window + 1) if sliding_window is not None else 0
    span = q_start + t - lo                                    # keys some row may see
    splits = num_splits or _num_splits(b * hkv, span, block_n, q.device)
    split_size = triton.cdiv(triton.cdiv(span, splits), block_n) * block_n
    splits = triton.cdiv(span, split_size)
    out = torch.empty_like(q)
    part_m = part_l = part_acc = out                           # unused when one split finishes the rows
    if splits > 1:
        part_m = torch.empty(b * hkv * splits * block_m, dtype=torch.float32, device=q.device)
        part_l = torch.empty_like(part_m)
        part_acc = torch.empty(part_m.numel() * d, dtype=torch.float32, device=q.device)
    dot, precision = _dot(q)
    common = dict(HKV=hkv, GROUP=g, HEAD_DIM=d)
    K.attn_decode_kernel[(b * hkv, splits)](
        q, k, v, sinks, t, k.shape[1], q_start, sliding_window or 0, f32_bits(sm_scale), split_size,
        *_strides(q, k, v, out), out, part_m, part_l, part_acc, **common,
        HAS_WINDOW=sliding_window is not None, NUM_SPLITS=splits, BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_DTYPE=dot, PRECISION=precision, num_warps=4, num_stages=3)
    if splits > 1:
        K.attn_decode_reduce_kernel[(b * hkv,)](
            part_m, part_l, part_acc, sinks, out, t, *out.stride()[:3], **common, NUM_SPLITS=splits,
            SPLITS_PAD=triton.next_power_of_2(splits), BLOCK_M=block_m, num_warps=4)
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, *, sm_scale: float,
              sliding_window: int | None, q_start: int) -> torch.Tensor:
    """Same contract as `plugins.attention.reference.attention`; decode or prefill kernel by shape."""
    _check(q, k, v, sinks, sm_scale, sliding_window, q_start)
    t, hq, hkv = q.shape[1], q.shape[2], k.shape[2]
    if q.numel() == 0:  # no queries (or no batch): nothing to launch (an empty cache has no key blocks)
        return torch.empty_like(q)
    run = attention_decode if t * (hq // hkv) <= DECODE_MAX_ROWS else attention_prefill
    return run(q, k, v, sinks, sm_scale=sm_scale, sliding_window=sliding_window, q_start=q_start)
