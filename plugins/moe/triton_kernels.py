"""Triton kernels of the weight-only MoE: routing, sorting by expert, two grouped GEMMs with the FP4
weights decoded in registers, and the weighted combine. Launchers live in `plugins.moe.fused`.

Sorted layout (as the GEMMs read it): the N*k (token, slot) pairs, identified by `flat = token*k + slot`,
grouped by expert; each expert's group is padded to a multiple of BLOCK_M with the sentinel N*k, so every
BLOCK_M rows belong to one expert (`block_expert[b]`, -1 past the end).

The GEMMs read a weight tile transposed, [BLOCK_N, BLOCK_K], any strides: with K-major storage a
byte's two codes (inputs 2j, 2j+1) and a thread's consecutive bytes run along K, which is the layout of
the tensor-core operand, so decoding needs no shuffles (`ProjectionTensors.k_major`). Decoding is exact:
an E2M1 code c placed in float16 bits as `(c & 7) << 9 | (c & 8) << 12` is the E2M1 value times 2**-14
(subnormals included) and an E4M3 byte b as `(b & 0x7F) << 7 | (b & 0x80) << 8` is its value times
2**-8 (the E4M3 NaN byte 0x7F reads as 480: NVFP4 writers, Model Optimizer and trtkit convert, emit
scales of at most 448, never NaN, and `TrtkitMoE` refuses a NaN scale at load); the powers of two are
folded into the block scale, so the product equals `value * (block * global)` in float32 as
`plugins.formats` computes it, then one cast to the dot dtype. On CUDA the nibble step runs as PTX on
32-bit words (`_E2M1_HALVES_PTX`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from plugins.moe.triton_formats import FMT_BF16, FMT_NVFP4, FMT_NVFP4_SPREAD, _block_scale, _e2m1_f16
from plugins.moe.triton_spread import _spread_step


@triton.jit
def _route_rows(logits_ptr, weights_ptr, ids_ptr, rows, N, E, stride_l, TOP_K: tl.constexpr,
                K_PAD: tl.constexpr, E_PAD: tl.constexpr):
    """Rows of router logits: each row's top k experts (lowest index first on ties; NaN above any number, as
    torch.topk ranks it, so a NaN row still picks real experts) and the softmax over their logits, stored
    at flat = row * TOP_K + slot. Returns (experts [R, K_PAD] i32, flat, valid)."""
    cols = tl.arange(0, E_PAD)                                           # [E_PAD]
    slots = tl.arange(0, K_PAD)                                          # [K_PAD]
    logits = tl.load(logits_ptr + rows[:, None] * stride_l + cols[None, :],
                     mask=(rows < N)[:, None] & (cols < E)[None, :], other=0.0).to(tl.float32)
    logits = tl.where(logits != logits, float("inf"), logits)           # NaN ranks first, as in torch.topk
    logits = tl.where((cols < E)[None, :], logits, float("-inf"))       # rows past N stay finite
    top = tl.full((rows.shape[0], K_PAD), float("-inf"), tl.float32)
    chosen = tl.zeros((rows.shape[0], K_PAD), tl.int32)
    for j in tl.static_range(TOP_K):
        best = tl.max(logits, axis=1)                                    # [R]
        idx = tl.argmax(logits, axis=1)                                  # [R], lowest index on ties
        top = tl.where(slots[None, :] == j, best[:, None], top)
        chosen = tl.where(slots[None, :] == j, idx[:, None], chosen)
        logits = tl.where(cols[None, :] == idx[:, None], float("-inf"), logits)
    p = tl.exp(top - tl.max(top, axis=1)[:, None])                       # slots >= TOP_K give 0
    kmask = (rows < N)[:, None] & (slots < TOP_K)[None, :]
    flat = rows[:, None] * TOP_K + slots[None, :]                        # [R, K_PAD]
    tl.store(weights_ptr + flat, p / tl.sum(p, axis=1)[:, None], mask=kmask)
    tl.store(ids_ptr + flat, chosen, mask=kmask)
    return chosen, flat, kmask


@triton.jit
def _route_kernel(logits_ptr, weights_ptr, ids_ptr, counts_ptr, ranks_ptr, N, E, stride_l,
                  TOP_K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """Top-k of each logits row, softmax over those k, and each pair's rank among its expert's pairs."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)           # [BN]
    chosen, flat, kmask = _route_rows(logits_ptr, weights_ptr, ids_ptr, rows, N, E, stride_l, TOP_K, K_PAD,
                                      E_PAD)
    rank = tl.atomic_add(counts_ptr + chosen, 1, mask=kmask)
    tl.store(ranks_ptr + flat, rank, mask=kmask)


@triton.jit
def _align(ids_ptr, ranks_ptr, counts_ptr, offsets_ptr, sorted_ptr, block_expert_ptr, total_ptr,
           NK, E, MAX_PADDED, MAX_BLOCKS, BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """Within one program: padded expert offsets, the expert of every BLOCK_M block, the sorted flat ids."""
    experts = tl.arange(0, E_PAD)
    counts = tl.load(counts_ptr + experts, mask=experts < E, other=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    end = tl.cumsum(padded, axis=0)                                      # [E_PAD]
    tl.store(offsets_ptr + experts, end - padded, mask=experts < E)
    total = tl.sum(padded, axis=0)
    tl.store(total_ptr, total)
    lane = tl.arange(0, BLOCK)
    for b0 in range(0, MAX_BLOCKS, BLOCK):
        b = b0 + lane
        # the owner of block b is the number of experts whose padded range ends at or before it
        owner = tl.sum(((end[None, :] <= (b * BLOCK_M)[:, None]) & (experts < E)[None, :]).to(tl.int32),
                       axis=1)
        tl.store(block_expert_ptr + b, tl.where(b * BLOCK_M < total, owner, -1), mask=b < MAX_BLOCKS)
    for p0 in range(0, MAX_PADDED, BLOCK):
        tl.store(sorted_ptr + p0 + lane, tl.zeros((BLOCK,), tl.int32) + NK, mask=p0 + lane < MAX_PADDED)
    tl.debug_barrier()  # offsets and sentinels are written before any pair is placed
    for j0 in range(0, NK, BLOCK):
        j = j0 + lane
        m = j < NK
        expert = tl.load(ids_ptr + j, mask=m, other=0)
        pos = tl.load(offsets_ptr + expert, mask=m, other=0) + tl.load(ranks_ptr + j, mask=m, other=0)
        tl.store(sorted_ptr + pos, j, mask=m)


@triton.jit
def _align_kernel(ids_ptr, ranks_ptr, counts_ptr, offsets_ptr, sorted_ptr, block_expert_ptr, total_ptr,
                  NK, E, MAX_PADDED, MAX_BLOCKS,
                  BLOCK_M: tl.constexpr, E_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """One program: `_align` after `_route_kernel`'s programs have counted every pair."""
    _align(ids_ptr, ranks_ptr, counts_ptr, offsets_ptr, sorted_ptr, block_expert_ptr, total_ptr, NK, E,
           MAX_PADDED, MAX_BLOCKS, BLOCK_M, E_PAD, BLOCK)


@triton.jit
def _route_align_kernel(logits_ptr, weights_ptr, ids_ptr, counts_ptr, ranks_ptr, offsets_ptr, sorted_ptr,
                        block_expert_ptr, total_ptr, N, E, stride_l, MAX_PADDED, MAX_BLOCKS,
                        TOP_K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, N_PAD: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK: tl.constexpr):
    """Few tokens (decode): routing and sorting in one program, one launch instead of a memset and two.
    Counts and ranks come from comparing every (token, slot) pair with every other (no atomics), so a
    pair's rank is its order among its expert's pairs."""
    chosen, flat, kmask = _route_rows(logits_ptr, weights_ptr, ids_ptr, tl.arange(0, N_PAD), N, E, stride_l,
                                      TOP_K, K_PAD, E_PAD)
    pair_ids = tl.reshape(chosen, (N_PAD * K_PAD,))                      # [P]
    pair_flat = tl.reshape(flat, (N_PAD * K_PAD,))
    pair_ok = tl.reshape(kmask, (N_PAD * K_PAD,))
    earlier = (pair_ids[None, :] == pair_ids[:, None]) & pair_ok[None, :] & (pair_flat[None, :] < pair_flat[:, None])
    tl.store(ranks_ptr + pair_flat, tl.sum(earlier.to(tl.int32), axis=1), mask=pair_ok)
    experts = tl.arange(0, E_PAD)
    counts = tl.sum(((pair_ids[None, :] == experts[:, None]) & pair_ok[None, :]).to(tl.int32), axis=1)
    tl.store(counts_ptr + experts, counts, mask=experts < E)
    tl.debug_barrier()  # ids, ranks and counts are written before `_align` reads them
    _align(ids_ptr, ranks_ptr, counts_ptr, offsets_ptr, sorted_ptr, block_expert_ptr, total_ptr, N * TOP_K, E,
           MAX_PADDED, MAX_BLOCKS, BLOCK_M, E_PAD, BLOCK)


@triton.jit
def _e2m1_halves(code):
    """uint8 bytes -> (low nibble, high nibble) as float16 E2M1 values times 2**-14 (exact)."""
    return _e2m1_f16(code & 0xF), _e2m1_f16(code >> 4)


# The same on CUDA in 32-bit words: 4 bytes in, 8 half-precision values out, 2.75 instructions a value.
# prmt spreads bytes (b0, b1) and (b2, b3) into the 16-bit halves of two words; a nibble's magnitude
# bits go to bits 9..11 of its half and its sign bit to bit 15.
_E2M1_HALVES_PTX: tl.constexpr = tl.constexpr("""{
.reg .b32 t0, t1, m, s;
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
shl.b32 m, t0, 9; and.b32 m, m, 0x0E000E00; shl.b32 s, t0, 12; and.b32 s, s, 0x80008000; or.b32 $0, m, s;
shl.b32 m, t1, 9; and.b32 m, m, 0x0E000E00; shl.b32 s, t1, 12; and.b32 s, s, 0x80008000; or.b32 $1, m, s;
shl.b32 m, t0, 5; and.b32 m, m, 0x0E000E00; shl.b32 s, t0, 8; and.b32 s, s, 0x80008000; or.b32 $2, m, s;
shl.b32 m, t1, 5; and.b32 m, m, 0x0E000E00; shl.b32 s, t1, 8; and.b32 s, s, 0x80008000; or.b32 $3, m, s;
}""")


@triton.jit
def _e2m1_halves_asm(code):
    return tl.inline_asm_elementwise(_E2M1_HALVES_PTX, "=r,=r,=r,=r,r", [code],
                                     dtype=(tl.float16, tl.float16), is_pure=True, pack=4)


# BF16 variant (bf16 activations on sm_90): a nibble's magnitude bits go to bits 6..8 and its sign to
# bit 15, which is the bfloat16 E2M1 value times 2**-126 (subnormal for code 1); two bf16x2 multiplies,
# by 2**63 (exact) and by the block scale times 2**63 rounded to bf16, give the weight in 1 rounding.
_E2M1_BF16_PTX: tl.constexpr = tl.constexpr("""{
.reg .b32 t0, t1, m, s, c;
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
mov.b32 c, 0x5F005F00;
shl.b32 m, t0, 6; and.b32 m, m, 0x01C001C0; shl.b32 s, t0, 12; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 m, m, c; mul.rn.bf16x2 $0, m, $5;
shl.b32 m, t1, 6; and.b32 m, m, 0x01C001C0; shl.b32 s, t1, 12; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 m, m, c; mul.rn.bf16x2 $1, m, $6;
shl.b32 m, t0, 2; and.b32 m, m, 0x01C001C0; shl.b32 s, t0, 8; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 m, m, c; mul.rn.bf16x2 $2, m, $5;
shl.b32 m, t1, 2; and.b32 m, m, 0x01C001C0; shl.b32 s, t1, 8; and.b32 s, s, 0x80008000; or.b32 m, m, s;
mul.rn.bf16x2 m, m, c; mul.rn.bf16x2 $3, m, $6;
}""")


@triton.jit
def _e2m1_bf16_asm(code, scale):
    """uint8 bytes, bf16 scales * 2**63 (same shape) -> (low, high nibble) weights in bf16."""
    return tl.inline_asm_elementwise(_E2M1_BF16_PTX, "=r,=r,=r,=r,r,r,r", [code, scale],
                                     dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)


@triton.jit
def _load_weight(w_ptr, s_ptr, k0, n, K, N, stride_wk, stride_wn, stride_sk, stride_sn,
                 FMT: tl.constexpr, GROUP: tl.constexpr, BK: tl.constexpr, W_VEC: tl.constexpr,
                 S_VEC: tl.constexpr):
    """The raw bytes of input rows k0..k0+BK-1 of one expert's weight [K, N], transposed: BF16: values
    [BN, BK]; FP4: (packed codes [BN, BK/2] u8, block-scale bytes [BN, BK/GROUP] u8). Any strides; a
    unit input stride (K-major storage) puts each thread's bytes next to each other along K, which is
    the layout the tensor-core operand wants. Rows past K and columns past N read as zero (no traffic).

    k0 is a multiple of BK and K of W_VEC packed bytes / S_VEC scales (the launcher picks them), so the
    K bound is tested in whole vectors: with 16-byte aligned rows Triton then loads W_VEC / S_VEC bytes
    at a time, which it can pipeline with cp.async (a load of 1 byte per thread it issues synchronously
    in every K step: one memory round trip per step)."""
    nmask = (n < N)[:, None]
    if FMT == FMT_BF16:
        k = k0 + tl.arange(0, BK)
        first = tl.load(w_ptr + n[:, None] * stride_wn + k[None, :] * stride_wk,
                        mask=nmask & (k < K)[None, :], other=0.0)
        second = first
    else:
        packed_rows = tl.multiple_of(k0 // 2, BK // 2) + tl.arange(0, BK // 2)
        first = tl.load(w_ptr + n[:, None] * stride_wn + packed_rows[None, :] * stride_wk,
                        mask=nmask & (packed_rows // W_VEC < K // 2 // W_VEC)[None, :], other=0)
        g = tl.multiple_of(k0 // GROUP, BK // GROUP) + tl.arange(0, BK // GROUP)
        second = tl.load(s_ptr + n[:, None] * stride_sn + g[None, :] * stride_sk,
                         mask=nmask & (g // S_VEC < K // GROUP // S_VEC)[None, :], other=0)
    return first, second


@triton.jit
def _decode_weight(first, second, gs, FMT: tl.constexpr, GROUP: tl.constexpr, BK: tl.constexpr,
                   BN: tl.constexpr, W_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr, ASM: tl.constexpr,
                   BF16_SCALE: tl.constexpr):
    """`_load_weight`'s bytes -> the weight tile transposed, [BN, BK], rounded to W_DTYPE (the
    activations' dtype, as the reference decodes) and held in DOT_DTYPE. A byte's two codes are
    adjacent inputs (2j, 2j+1). ASM: PTX nibble decode (CUDA only). BF16_SCALE (with ASM and bf16
    activations): the scale multiply runs in bf16x2, with the block scale rounded to bf16 first (exact
    for MXFP4 and power-of-two NVFP4 scales, else within one bf16 rounding of the reference)."""
    if FMT == FMT_BF16:
        w = first.to(W_DTYPE)
    elif ASM and BF16_SCALE and W_DTYPE == tl.bfloat16:
        scale = _block_scale(second, gs, FMT, 9.223372036854775808e18).to(tl.bfloat16)  # * 2**63
        scale = tl.reshape(tl.broadcast_to(scale[:, :, None], (BN, BK // GROUP, GROUP // 2)), (BN, BK // 2))
        lo, hi = _e2m1_bf16_asm(first, scale)
        w = tl.reshape(tl.join(lo, hi), (BN, BK))
    else:
        scale = _block_scale(second, gs, FMT, 16384.0)                       # [BN, BK/GROUP], * 2**14
        scale = tl.reshape(tl.broadcast_to(scale[:, :, None], (BN, BK // GROUP, GROUP // 2)), (BN, BK // 2))
        if ASM:
            lo, hi = _e2m1_halves_asm(first)
        else:
            lo, hi = _e2m1_halves(first)
        w = tl.reshape(tl.join(lo.to(tl.float32) * scale, hi.to(tl.float32) * scale), (BN, BK))
        w = w.to(W_DTYPE)
    return w.to(DOT_DTYPE)


@triton.jit
def _k_step(acc, a_base, valid, raw0, raw1, k0, K, gs, FMT: tl.constexpr, GROUP: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, W_DTYPE: tl.constexpr,
            DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, ASM: tl.constexpr, BF16_SCALE: tl.constexpr,
            SWAP_AB: tl.constexpr):
    """acc += A[:, k0:k0+BLOCK_K] @ W[k0:k0+BLOCK_K, :], W given as `_load_weight` bytes. SWAP_AB: acc is
    transposed, [BLOCK_N, BLOCK_M], and the decoded weight tile is the dot's left operand (the "M" side
    of the tensor-core instruction is the weight's output columns, the tokens are the narrow side)."""
    cols = k0 + tl.arange(0, BLOCK_K)
    a = tl.load(a_base + cols[None, :], mask=valid[:, None] & (cols < K)[None, :], other=0.0)
    w = _decode_weight(raw0, raw1, gs, FMT, GROUP, BLOCK_K, BLOCK_N, W_DTYPE, DOT_DTYPE, ASM, BF16_SCALE)
    if SWAP_AB:
        acc = tl.dot(w, tl.trans(a.to(DOT_DTYPE)), acc, input_precision=PRECISION)
    else:
        acc = tl.dot(a.to(DOT_DTYPE), tl.trans(w), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _expert_gemm_kernel(
        a_ptr, w_ptr, s_ptr, gs_ptr, bias_ptr, out_ptr, sorted_ptr, block_expert_ptr, total_ptr,
        NK, K, N, k_split, stride_am, stride_we, stride_wk, stride_wn, stride_se, stride_sk, stride_sn,
        stride_be, stride_om, stride_os, limit, alpha,
        GATE_UP: tl.constexpr, TOP_K: tl.constexpr, FMT: tl.constexpr, GROUP: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        W_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, ASM: tl.constexpr,
        BF16_SCALE: tl.constexpr, SWAP_AB: tl.constexpr, W_VEC: tl.constexpr, S_VEC: tl.constexpr):
    """One BLOCK_M block of sorted rows times one expert's weight [K, N] (+ bias).

    GATE_UP: A rows are tokens (x[flat // TOP_K]); the BLOCK_N interleaved gate/up columns become
    BLOCK_N/2 SwiGLU outputs stored at the sorted row. Else (down): A rows are the sorted rows of the
    activation buffer; program_id(2) takes input rows [pid*k_split, +k_split) (split-K) and its float32
    partial product goes to row `flat` of output slice pid (stride_os), the bias to slice 0 only.
    """
    pid_m = tl.program_id(0)
    if pid_m * BLOCK_M >= tl.load(total_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    flat = tl.load(sorted_ptr + rows)
    valid = flat < NK
    a_rows = (flat // TOP_K) if GATE_UP else rows
    a_base = a_ptr + tl.where(valid, a_rows, 0).to(tl.int64)[:, None] * stride_am
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    w_base = w_ptr + expert * stride_we
    s_base = s_ptr + expert * stride_se
    gs = 1.0
    if FMT == FMT_NVFP4 or FMT == FMT_NVFP4_SPREAD:
        gs = tl.load(gs_ptr).to(tl.float32)
    acc_scale = 1.0
    if FMT == FMT_NVFP4_SPREAD and W_DTYPE == tl.bfloat16:  # gs = mantissa * 2**e: the decode takes the
        bits = gs.to(tl.int32, bitcast=True)                 # mantissa, the accumulator 2**(e + 9)
        acc_scale = (bits & 0x7F800000).to(tl.float32, bitcast=True) * 512.0
        gs = ((bits & 0x007FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    k_lo = tl.program_id(2) * k_split
    k_hi = tl.minimum(k_lo + k_split, K)
    if SWAP_AB:
        acc_t = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    else:
        acc_t = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    if FMT == FMT_NVFP4_SPREAD:  # BLOCK_K = the storage chunk (128); K % 128 == 64 leaves a 64-input tail
        k_full = k_lo + (k_hi - k_lo) // BLOCK_K * BLOCK_K
        for k0 in range(k_lo, k_full, BLOCK_K):  # loads pipelined num_stages deep by Triton (cp.async)
            acc_t = _spread_step(acc_t, a_base, valid, w_base, s_base, n, k0, N, gs, BLOCK_N, BLOCK_K, W_DTYPE,
                                 DOT_DTYPE, PRECISION, ASM, SWAP_AB)
        if k_full < k_hi:
            acc_t = _spread_step(acc_t, a_base, valid, w_base, s_base, n, k_full, N, gs, BLOCK_N, BLOCK_K // 2,
                                 W_DTYPE, DOT_DTYPE, PRECISION, ASM, SWAP_AB)
    else:
        for k0 in range(k_lo, k_hi, BLOCK_K):  # loads pipelined num_stages deep by Triton (cp.async)
            raw0, raw1 = _load_weight(w_base, s_base, k0, n, k_hi, N, stride_wk, stride_wn, stride_sk,
                                      stride_sn, FMT, GROUP, BLOCK_K, W_VEC, S_VEC)
            acc_t = _k_step(acc_t, a_base, valid, raw0, raw1, k0, k_hi, gs, FMT, GROUP, BLOCK_M, BLOCK_N,
                            BLOCK_K, W_DTYPE, DOT_DTYPE, PRECISION, ASM, BF16_SCALE, SWAP_AB)
    if SWAP_AB:
        acc = tl.trans(acc_t)
    else:
        acc = acc_t
    if FMT == FMT_NVFP4_SPREAD and W_DTYPE == tl.bfloat16:
        acc = acc * acc_scale
    bias_cols = tl.where(tl.program_id(2) == 0, N, 0)  # split 0 adds the bias
    bias = tl.load(bias_ptr + expert * stride_be + n, mask=n < bias_cols, other=0.0)
    acc += bias.to(W_DTYPE).to(tl.float32)[None, :]
    if GATE_UP:
        gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
        act = (up + 1.0) * (gate * tl.sigmoid(gate * alpha))
        c = tl.program_id(1) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        ptr = out_ptr + rows.to(tl.int64)[:, None] * stride_om + c[None, :]
        tl.store(ptr, act.to(out_ptr.dtype.element_ty), mask=valid[:, None] & (c < N // 2)[None, :])
    else:
        row = tl.where(valid, flat, 0).to(tl.int64)
        ptr = out_ptr + tl.program_id(2) * stride_os + row[:, None] * stride_om + n[None, :]
        tl.store(ptr, acc, mask=valid[:, None] & (n < N)[None, :])


@triton.jit
def _swiglu_splits_kernel(y_ptr, sorted_ptr, out_ptr, NK, INTER, P, stride_ys, stride_om, limit, alpha,
                          SPLITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """gate_up split over K (`plugins.moe.gluon_frag`, few tokens): out[r, c] = SwiGLU of the sum over splits
    of y[s, flat, 2c] (gate) and y[s, flat, 2c + 1] (up), flat = sorted[r] (bias already in split 0), in the
    output dtype; rows of padding are left alone, as the one-split kernel leaves them."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    flat = tl.load(sorted_ptr + r, mask=r < P, other=NK)
    mask = (flat < NK)[:, None] & (c < INTER)[None, :]
    base = y_ptr + tl.where(flat < NK, flat, 0).to(tl.int64)[:, None] * (2 * INTER) + 2 * c[None, :]
    gate = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    up = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    for s in tl.static_range(SPLITS):
        gate += tl.load(base + s * stride_ys, mask=mask, other=0.0)
        up += tl.load(base + s * stride_ys + 1, mask=mask, other=0.0)
    gate = tl.minimum(gate, limit)
    up = tl.minimum(tl.maximum(up, -limit), limit)
    act = (up + 1.0) * (gate * tl.sigmoid(gate * alpha))
    tl.store(out_ptr + r.to(tl.int64)[:, None] * stride_om + c[None, :], act.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _combine_kernel(y_ptr, w_ptr, out_ptr, N, NK, H, stride_om, TOP_K: tl.constexpr, SPLIT_K: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    """out[t] = sum_s w[t, s] * sum_p y[p, t*k + s], in float32, then the output dtype."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (t < N)[:, None] & (h < H)[None, :]
    acc = tl.zeros((BLOCK_T, BLOCK_H), tl.float32)
    for s in tl.static_range(TOP_K):
        row = (t * TOP_K + s).to(tl.int64)                                   # [BLOCK_T]
        y = tl.zeros((BLOCK_T, BLOCK_H), tl.float32)
        for p in tl.static_range(SPLIT_K):
            y += tl.load(y_ptr + (p * NK + row)[:, None] * H + h[None, :], mask=mask, other=0.0)
        acc += tl.load(w_ptr + row, mask=t < N, other=0.0)[:, None] * y
    tl.store(out_ptr + t.to(tl.int64)[:, None] * stride_om + h[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask)
