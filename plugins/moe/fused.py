"""Launchers of the Triton MoE (kernels in `plugins.moe.triton_kernels`): route -> align -> gate_up GEMM with
fused SwiGLU -> down GEMM -> combine. Four launches up to FUSED_ROUTE_MAX_PAIRS (token, slot) pairs
(routing and sorting in one program), six above (one memset); no host synchronization, so the whole
call can be captured in a CUDA graph.

Supported: x [N, H] in bfloat16/float16/float32 on CUDA (or CPU under TRITON_INTERPRET=1); experts in any
`WeightFormat`, any strides (K-major storage decodes fast; the spread storage, contiguous by construction,
faster: see `ProjectionTensors.k_major`; nvfp4_frag runs the Hopper Gluon GEMM `plugins.moe.gluon_frag` instead
of Triton's, fastest, bf16 activations on sm_90 only); any E >= top_k, top_k <= 8; H and I multiples of the FP4
block (16 NVFP4, 32 MXFP4; 64 nvfp4_spread and nvfp4_frag; BF16 experts: any).
Accumulation is float32; the SwiGLU output is stored in x's dtype (the reference rounds each
intermediate to x's dtype instead, so the two agree to x's precision).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from plugins.moe import e2m1_frag, e2m1_spread
from plugins.moe import triton_formats as F
from plugins.moe import triton_kernels as K
from plugins.moe.tensors import (
    ACTIVATION_DTYPES,
    MoeTensors,
    ProjectionTensors,
    WeightFormat,
    check_moe_inputs,
)

_TL_DTYPE = dict(zip(ACTIVATION_DTYPES, (tl.bfloat16, tl.float16, tl.float32), strict=True))
_FMT = {WeightFormat.BF16: (F.FMT_BF16, 32), WeightFormat.MXFP4: (F.FMT_MXFP4, 32),
        WeightFormat.NVFP4: (F.FMT_NVFP4, 16), WeightFormat.NVFP4_SPREAD: (F.FMT_NVFP4_SPREAD, 16)}
_ALIGN_BLOCK = 128    # lanes of the single align program
FUSED_ROUTE_MAX_PAIRS = 128  # (token, slot) pairs routed and sorted by one program (decode batches)
# warps of that program by the most pairs they serve (H100, BENCHMARKS.md: 128 pairs 12.3 us with 8, 15.6 with 4)
ROUTE_WARPS = ((16, 4), (FUSED_ROUTE_MAX_PAIRS, 8))
# (routing rows, combine rows, combine columns) per program: the interpreter pays per program, not per lane
_SMALL_BLOCKS = {"cuda": (16, 1, 256), "interpreter": (64, 64, 128)}


@dataclass(frozen=True)
class MoeConfig:
    """Tile sizes of both grouped GEMMs. block_n counts output columns (gate_up: interleaved gate/up
    columns, so block_n/2 SwiGLU outputs); block_k is a multiple of 32 (one MXFP4 block; nvfp4_spread
    experts always take 128, their storage chunk). split_k splits the down projection's input dimension
    over that many programs (None: enough programs to give each SM split_fill programs, at most
    MAX_SPLIT_K). num_stages is the depth of Triton's cp.async pipeline for the weight, scale and
    activation tiles."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    split_k: int | None = None
    asm_decode: bool = True   # PTX nibble decode on CUDA (the interpreter always uses plain Triton)
    bf16_scale: bool = False  # with asm_decode and bf16 activations: scale multiply in bf16x2
    swap_ab: bool = False     # weight tile as the dot's wide (M) operand, tokens as the narrow one
    split_fill: int = 2       # split_k=None: aim for split_fill programs per SM in the down projection

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"MoeConfig.{name}={v} must be a power of two >= 16")
        if self.block_k < 32:
            raise ValueError(f"MoeConfig.block_k={self.block_k} must be >= 32 (one MXFP4 block)")
        if self.split_k is not None and self.split_k < 1:
            raise ValueError(f"MoeConfig.split_k={self.split_k} must be None or >= 1")
        if self.split_fill < 1:
            raise ValueError(f"MoeConfig.split_fill={self.split_fill} must be >= 1")


INTERPRETER_CONFIG = MoeConfig(64, 128, 128, split_k=1)  # few, large programs: cheap to interpret
DECODE_CONFIG = MoeConfig(16, 64, 128, num_warps=4, num_stages=4, bf16_scale=True, swap_ab=True,
                          split_fill=8)   # few rows per expert
# the same on spread storage, by (token, slot) pairs: in both H100 runs of the chunk-major storage
# (BENCHMARKS.md) 6 stages were 1-10% faster than 4 for one token (4 pairs), 3 stages 1-4.5% faster from 8
SPREAD_DECODE_CONFIGS = ((4, dataclasses.replace(DECODE_CONFIG, num_stages=6)),
                         (None, dataclasses.replace(DECODE_CONFIG, num_stages=3)))
PREFILL_CONFIG = MoeConfig(64, 128, 64, num_warps=4, num_stages=3, split_k=1)
# more than 8 mean rows per expert: 32-row blocks, so an expert's ~16 rows read its weights once
DECODE_WIDE_CONFIG = MoeConfig(32, 64, 128, num_warps=4, num_stages=4, bf16_scale=True, swap_ab=True,
                               split_fill=8)
DECODE_MAX_ROWS_PER_EXPERT = 16  # mean (token, slot) pairs per expert up to which DECODE_CONFIG is used
MAX_SPLIT_K = 8


def _by_pairs(table: tuple, num_pairs: int):
    """The value of the first (most pairs, value) row of `table` that covers num_pairs (None: any)."""
    return next(value for most, value in table if most is None or num_pairs <= most)


def default_config(num_pairs: int, num_experts: int, device: torch.device, spread: bool = False) -> MoeConfig:
    """The tiles for this many (token, slot) pairs over these experts (spread: on `nvfp4_spread` storage)."""
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    if num_pairs <= 8 * num_experts:
        return _by_pairs(SPREAD_DECODE_CONFIGS, num_pairs) if spread else DECODE_CONFIG
    return DECODE_WIDE_CONFIG if num_pairs <= DECODE_MAX_ROWS_PER_EXPERT * num_experts else PREFILL_CONFIG


def config_for(cfg: MoeConfig, t: MoeTensors) -> MoeConfig:
    """The config fused_moe runs for these experts: the K step of the kernels' own storages is their chunk
    (128); nvfp4_frag's tiles are 64 output rows."""
    if WeightFormat.NVFP4_FRAG in (t.gate_up.fmt, t.down.fmt):
        return dataclasses.replace(cfg, block_k=e2m1_spread.CHUNK, block_n=64, swap_ab=True)
    if WeightFormat.NVFP4_SPREAD in (t.gate_up.fmt, t.down.fmt):
        return dataclasses.replace(cfg, block_k=e2m1_spread.CHUNK)
    return cfg


FRAG_BLOCK_M = (16, 32, 64)   # the row blocks the Gluon kernel is built for
SWIGLU_SPLIT_BLOCKS = (16, 256)  # (rows, columns) a program of `_swiglu_splits_kernel`
FRAG_GATE_UP_FILL = 8            # nvfp4_frag gate_up: split K until this many programs per SM (0: never split)


def _frag_gemm(a, proj: ProjectionTensors, bias, out, sorting, nk: int, gate_up: bool, top_k: int, limit: float,
               alpha: float, cfg: MoeConfig, k_split: int) -> None:
    """The grouped GEMM on nvfp4_frag storage: `plugins.moe.gluon_frag` (Hopper, bf16 activations)."""
    if a.dtype != torch.bfloat16 or cfg.block_m not in FRAG_BLOCK_M or not e2m1_frag.frag_available(a.device):
        raise ValueError(f"moe: nvfp4_frag experts run on Hopper (sm_90) with bfloat16 activations and block_m in "
                         f"{FRAG_BLOCK_M}, got {a.dtype} on {a.device} (block_m={cfg.block_m}); store them as "
                         "nvfp4_spread (k_major(spread=True); TensorRT-LLM: TRTKIT_MOE_STORAGE=spread)")
    from plugins.moe import gluon_frag  # GPU only (frag_available imported it)

    sorted_ids, block_expert, total = sorting
    n_out, k = proj.out_features, proj.in_features
    splits = triton.cdiv(k, k_split)
    gs = proj.global_scale.reshape(1).to(torch.float32)
    grid = (block_expert.numel(), n_out // e2m1_frag.ROWS, splits)
    gluon_frag.frag_gemm_kernel[grid](
        a, proj.weight, proj.scale.view(torch.uint8), gs, bias, out, sorted_ids, block_expert, total,
        nk, k, n_out, k_split, a.stride(0), proj.weight.stride(0), proj.scale.stride(0), bias.stride(0),
        out.stride(-2), out.stride(0) if splits > 1 else 0, limit, alpha, GATE_UP=gate_up,
        SWIGLU=gate_up and splits == 1, TOP_K=top_k,
        **gluon_frag.launch_constexprs(cfg.block_m, cfg.num_stages), num_warps=gluon_frag.WARPS)


def _small_blocks(device: torch.device) -> tuple[int, int, int]:
    return _SMALL_BLOCKS["cuda" if device.type == "cuda" else "interpreter"]


def _weight_args(p: ProjectionTensors) -> tuple:
    """(w, s, gs, stride_we, stride_wk, stride_wn, stride_se, stride_sk, stride_sn) as the GEMM reads
    them: w indexed [expert, packed input row, output column] (nvfp4_spread: the kernel reads only the
    expert strides and computes its chunk-major addresses itself)."""
    w = p.weight
    if p.fmt is WeightFormat.BF16:
        return (w, w, w, w.stride(0), w.stride(1), w.stride(2), 0, 0, 0)
    if p.fmt is WeightFormat.MXFP4:
        e, out, groups, _ = w.shape
        w = w.reshape(e, out, groups * 16)                      # [E, out, in/2], input fastest
        s = p.scale
        return (w, s, w, w.stride(0), w.stride(2), w.stride(1), s.stride(0), s.stride(2), s.stride(1))
    s = p.scale.view(torch.uint8)                               # [E, in/16, out]
    gs = p.global_scale.reshape(1).to(torch.float32)
    return (w, s, gs, w.stride(0), w.stride(1), w.stride(2), s.stride(0), s.stride(1), s.stride(2))


def _vector(*sizes: int) -> int:
    """The widest load (bytes, a power of two <= 16) that divides every size: the FP4 loads test their K
    bound in such units, so every load of a K step is one width (see `_load_weight`)."""
    v = 16
    while v > 1 and any(n % v for n in sizes):
        v //= 2
    return v


def _split_k(cfg: MoeConfig, programs: int, k: int, device: torch.device) -> tuple[int, int]:
    """(splits, input rows per split), rows a multiple of block_k."""
    splits = cfg.split_k
    if splits is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        splits = max(1, min(MAX_SPLIT_K, triton.cdiv(cfg.split_fill * sms, programs)))
    rows = triton.cdiv(triton.cdiv(k, splits), cfg.block_k) * cfg.block_k
    return triton.cdiv(k, rows), rows


def _gemm(a, proj: ProjectionTensors, bias, out, sorting, nk: int, gate_up: bool, top_k: int,
          limit: float, alpha: float, cfg: MoeConfig, dtype: torch.dtype, k_split: int) -> None:
    if proj.fmt is WeightFormat.NVFP4_FRAG:
        return _frag_gemm(a, proj, bias, out, sorting, nk, gate_up, top_k, limit, alpha, cfg, k_split)
    sorted_ids, block_expert, total = sorting
    w, s, gs, swe, swk, swn, sse, ssk, ssn = _weight_args(proj)
    fmt, group = _FMT[proj.fmt]
    n_out = proj.out_features
    interpret = a.device.type != "cuda"
    dot = tl.float32 if interpret else _TL_DTYPE[dtype]
    k = proj.in_features
    splits = triton.cdiv(k, k_split)
    grid = (block_expert.numel(), triton.cdiv(n_out, cfg.block_n), splits)
    K._expert_gemm_kernel[grid](
        a, w, s, gs, bias, out, sorted_ids, block_expert, total,
        nk, k, n_out, k_split, a.stride(0), swe, swk, swn, sse, ssk, ssn,
        bias.stride(0), out.stride(-2), out.stride(0) if splits > 1 else 0, limit, alpha,
        GATE_UP=gate_up, TOP_K=top_k, FMT=fmt, GROUP=group,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        W_DTYPE=_TL_DTYPE[dtype], DOT_DTYPE=dot, PRECISION="ieee" if dot == tl.float32 else "tf32",
        ASM=cfg.asm_decode and not interpret, BF16_SCALE=cfg.bf16_scale, SWAP_AB=cfg.swap_ab,
        W_VEC=_vector(k // 2, cfg.block_k // 2), S_VEC=_vector(k // group, cfg.block_k // group),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _gate_up(x, t: MoeTensors, act, sorting, nk: int, top_k: int, limit: float, alpha: float, cfg: MoeConfig) -> None:
    """act[sorted row] = SwiGLU(x[token] @ gate_up + bias). nvfp4_frag with too few programs to fill the GPU
    (a few tokens: one wave of 64-row tiles, each a chain of dependent K steps) splits the input dimension
    as the down projection does (FRAG_GATE_UP_FILL programs per SM; 0: never) and finishes with
    `_swiglu_splits_kernel`."""
    h = t.gate_up.in_features
    splits, k_split = 1, h
    if t.gate_up.fmt is WeightFormat.NVFP4_FRAG and FRAG_GATE_UP_FILL:
        splits, k_split = _split_k(dataclasses.replace(cfg, split_k=None, split_fill=FRAG_GATE_UP_FILL),
                                   sorting[1].numel() * (t.gate_up.out_features // e2m1_frag.ROWS), h, x.device)
    if splits == 1:
        _gemm(x, t.gate_up, t.gate_up_bias.contiguous(), act, sorting, nk, True, top_k, limit, alpha, cfg, x.dtype, h)
        return
    i = t.down.in_features
    y = torch.empty(splits, nk, 2 * i, dtype=torch.float32, device=x.device)
    _gemm(x, t.gate_up, t.gate_up_bias.contiguous(), y, sorting, nk, True, top_k, limit, alpha, cfg, x.dtype, k_split)
    rows, cols = SWIGLU_SPLIT_BLOCKS
    p = sorting[0].numel()
    K._swiglu_splits_kernel[(triton.cdiv(p, rows), triton.cdiv(i, cols))](
        y, sorting[0], act, nk, i, p, y.stride(0), act.stride(0), limit, alpha, SPLITS=splits, BLOCK_R=rows,
        BLOCK_C=cols)


def route_and_sort(logits: torch.Tensor, top_k: int, block_m: int):
    """logits [N, E] -> (weights f32 [N, k], ids i32 [N, k], (sorted i32 [P], block_expert i32 [B],
    total i32 [1])). P = B * block_m is an upper bound on the padded length, known without a sync.
    Up to FUSED_ROUTE_MAX_PAIRS (token, slot) pairs: one launch; more: a memset and two launches."""
    n, e = logits.shape
    dev, nk = logits.device, n * top_k
    weights = torch.empty(n, top_k, dtype=torch.float32, device=dev)
    ids = torch.empty(n, top_k, dtype=torch.int32, device=dev)
    ranks = torch.empty(n, top_k, dtype=torch.int32, device=dev)
    max_blocks = triton.cdiv(nk, block_m) + min(e, nk)
    offsets = torch.empty(e, dtype=torch.int32, device=dev)
    sorted_ids = torch.empty(max_blocks * block_m, dtype=torch.int32, device=dev)
    block_expert = torch.empty(max_blocks, dtype=torch.int32, device=dev)
    total = torch.empty(1, dtype=torch.int32, device=dev)
    k_pad, e_pad = triton.next_power_of_2(top_k), triton.next_power_of_2(e)
    layout = (offsets, sorted_ids, block_expert, total)
    if nk <= FUSED_ROUTE_MAX_PAIRS:
        counts = torch.empty(e, dtype=torch.int32, device=dev)
        K._route_align_kernel[(1,)](
            logits, weights, ids, counts, ranks, *layout, n, e, logits.stride(0), sorted_ids.numel(),
            max_blocks, TOP_K=top_k, K_PAD=k_pad, E_PAD=e_pad, N_PAD=triton.next_power_of_2(n),
            BLOCK_M=block_m, BLOCK=_ALIGN_BLOCK, num_warps=_by_pairs(ROUTE_WARPS, nk))
    else:
        counts = torch.zeros(e, dtype=torch.int32, device=dev)
        rows = _small_blocks(dev)[0]
        K._route_kernel[(triton.cdiv(n, rows),)](
            logits, weights, ids, counts, ranks, n, e, logits.stride(0), TOP_K=top_k, K_PAD=k_pad,
            E_PAD=e_pad, BLOCK_N=rows)
        K._align_kernel[(1,)](ids, ranks, counts, *layout, nk, e, sorted_ids.numel(), max_blocks,
                              BLOCK_M=block_m, E_PAD=e_pad, BLOCK=_ALIGN_BLOCK)
    return weights, ids, (sorted_ids, block_expert, total)


def fused_moe(x: torch.Tensor, logits: torch.Tensor, t: MoeTensors, top_k: int, limit: float = 7.0,
              alpha: float = 1.702, config: MoeConfig | None = None) -> torch.Tensor:
    """x [N, H], router logits [N, E] -> [N, H] in x's dtype (see the module docstring)."""
    check_moe_inputs(x, logits, t, top_k)
    x = x.contiguous()
    n, h = x.shape
    if n == 0:  # no tokens: nothing to route (the kernels need at least one row)
        return torch.empty_like(x)
    nk = n * top_k
    spread = t.gate_up.fmt is WeightFormat.NVFP4_SPREAD  # (nvfp4_frag: the K-major table's tiles fit it best)
    cfg = config_for(config or default_config(nk, t.gate_up.num_experts, x.device, spread), t)
    weights, _, sorting = route_and_sort(logits, top_k, cfg.block_m)
    i = t.down.in_features
    act = torch.empty(sorting[0].numel(), i, dtype=x.dtype, device=x.device)
    _gate_up(x, t, act, sorting, nk, top_k, limit, alpha, cfg)
    splits, k_split = _split_k(cfg, sorting[1].numel() * triton.cdiv(h, cfg.block_n), i, x.device)
    y = torch.empty(splits, nk, h, dtype=torch.float32, device=x.device)
    _gemm(act, t.down, t.down_bias.contiguous(), y, sorting, nk, False, top_k, limit, alpha, cfg, x.dtype,
          k_split)
    out = torch.empty_like(x)
    _, rows, cols = _small_blocks(x.device)
    K._combine_kernel[(triton.cdiv(n, rows), triton.cdiv(h, cols))](
        y, weights, out, n, nk, h, out.stride(0), TOP_K=top_k, SPLIT_K=splits, BLOCK_T=rows, BLOCK_H=cols)
    return out
