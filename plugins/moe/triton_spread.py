"""The MoE GEMM's K step on spread storage (`WeightFormat.NVFP4_SPREAD`, layout and PTX program in
`plugins.moe.e2m1_spread`): one 128-input chunk (or the 64-input tail) decoded into two operand tiles, each
its own dot. Called from `plugins.moe.triton_kernels._expert_gemm_kernel`."""

from __future__ import annotations

import triton
import triton.language as tl

from plugins.moe import e2m1_spread
from plugins.moe.triton_formats import FMT_NVFP4_SPREAD, _block_scale, _e2m1_f16, _e4m3_over_256

_E2M1_SPREAD_PTX: tl.constexpr = tl.constexpr(e2m1_spread.ptx())
_E2M1_SPREAD_CONSTRAINTS: tl.constexpr = tl.constexpr(e2m1_spread.CONSTRAINTS)
_SPREAD_MASK: tl.constexpr = tl.constexpr(e2m1_spread.MASK)
_CHUNK_INPUTS: tl.constexpr = tl.constexpr(e2m1_spread.CHUNK)
_CODE_BYTES: tl.constexpr = tl.constexpr(e2m1_spread.CODE_BYTES)
_SCALE_BYTES: tl.constexpr = tl.constexpr(e2m1_spread.SCALE_BYTES)
_SPREAD_ROT1: tl.constexpr = tl.constexpr(e2m1_spread.WORDS[1][0][0])
_SPREAD_ROT2: tl.constexpr = tl.constexpr(e2m1_spread.WORDS[2][0][0])
_SPREAD_ROT3A: tl.constexpr = tl.constexpr(e2m1_spread.WORDS[3][0][0])
_SPREAD_MASK3A: tl.constexpr = tl.constexpr(e2m1_spread.WORDS[3][0][1])
_SPREAD_ROT3B: tl.constexpr = tl.constexpr(e2m1_spread.WORDS[3][1][0])
_SPREAD_MASK3B: tl.constexpr = tl.constexpr(e2m1_spread.WORDS[3][1][1])
# in-kernel powers of two of the spread decode (bf16 activations), see `e2m1_spread`: the global scale's
# mantissa (in [1, 2)) goes into the block scale, 2**(its exponent + 9) multiplies the accumulator
_SPREAD_ASM_FACTOR: tl.constexpr = tl.constexpr(2.0 ** 117)  # block scale * 2**126 / 2**9
_SPREAD_TL_FACTOR: tl.constexpr = tl.constexpr(2.0 ** 5)     # the plain decode's 2**14, / 2**9


@triton.jit
def _e2m1_spread_asm(code, scale_lo, scale_hi):
    """spread-order bytes [BN, H], bf16 block scales (* 2**117 * global-scale mantissa) of each half per byte
    -> (low-half, high-half) weights [BN, H] in bf16 (`plugins.moe.e2m1_spread.PROGRAM`)."""
    return tl.inline_asm_elementwise(_E2M1_SPREAD_PTX, _E2M1_SPREAD_CONSTRAINTS, [code, scale_lo, scale_hi],
                                     dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)


@triton.jit
def _rotl(x, n: tl.constexpr):
    if n == 0:
        return x
    else:
        return (x << n) | (x >> (32 - n))


@triton.jit
def _half_code(word, SHIFT: tl.constexpr):
    """The E2M1 code of one bf16 half of a decoded spread word: magnitude bits 6..8, sign bit 15."""
    h = word >> SHIFT
    return ((h >> 6) & 7) | ((h >> 12) & 8)


@triton.jit
def _quad(c0, c1, c2, c3, BN: tl.constexpr, H: tl.constexpr):
    """Four [BN, H/4] tensors -> [BN, H] with c0..c3 consecutive along the last axis."""
    return tl.reshape(tl.join(tl.join(c0, c2), tl.join(c1, c3)), (BN, H))


@triton.jit
def _spread_codes(code, BN: tl.constexpr, H: tl.constexpr):
    """spread-order bytes [BN, H] -> the E2M1 codes of the low-half and the high-half inputs, [BN, H] each
    (the decodes other than the PTX one): the words of `e2m1_spread.WORDS`, in `OUT_CODES` order."""
    q = tl.reshape(code.to(tl.uint32), (BN, H // 4, 2, 2))              # [.., byte bit 1, byte bit 0]
    even, odd = tl.split(q)
    b0, b2 = tl.split(even)
    b1, b3 = tl.split(odd)
    word = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)                      # [BN, H/4] groups
    w0 = word & _SPREAD_MASK
    w1 = _rotl(word, _SPREAD_ROT1) & _SPREAD_MASK
    w2 = _rotl(word, _SPREAD_ROT2) & _SPREAD_MASK
    w3 = (_rotl(word, _SPREAD_ROT3A) & _SPREAD_MASK3A) | (_rotl(word, _SPREAD_ROT3B) & _SPREAD_MASK3B)
    lo = _quad(_half_code(w0, 0), _half_code(w0, 16), _half_code(w1, 0), _half_code(w1, 16), BN, H)
    hi = _quad(_half_code(w2, 0), _half_code(w2, 16), _half_code(w3, 0), _half_code(w3, 16), BN, H)
    return lo, hi


@triton.jit
def _per_byte(scale, BN: tl.constexpr, H: tl.constexpr):
    """[BN, H/16] block scales -> [BN, H], each repeated for its 16 inputs."""
    return tl.reshape(tl.broadcast_to(scale[:, :, None], (BN, H // 16, 16)), (BN, H))


@triton.jit
def _spread_decode(code, s_lo, s_hi, gs, BN: tl.constexpr, H: tl.constexpr, W_DTYPE: tl.constexpr,
                   ASM: tl.constexpr):
    """One spread chunk: code bytes [BN, H] and each half's block-scale bytes [BN, H/16] -> the low-half and
    high-half weights [BN, H] in W_DTYPE. bf16 activations: gs is the global scale's mantissa and the
    weights come out times 2**-(its exponent + 9) (the kernel multiplies the accumulator back)."""
    if ASM and W_DTYPE == tl.bfloat16:
        g = gs * (256.0 * _SPREAD_ASM_FACTOR)  # gs is in [1, 2): exact, so one multiply a scale is too
        sl = _per_byte((_e4m3_over_256(s_lo) * g).to(tl.bfloat16), BN, H)
        sh = _per_byte((_e4m3_over_256(s_hi) * g).to(tl.bfloat16), BN, H)
        lo, hi = _e2m1_spread_asm(code, sl, sh)
    else:
        if W_DTYPE == tl.bfloat16:
            sl = _block_scale(s_lo, gs, FMT_NVFP4_SPREAD, _SPREAD_TL_FACTOR)
            sh = _block_scale(s_hi, gs, FMT_NVFP4_SPREAD, _SPREAD_TL_FACTOR)
        else:
            sl = _block_scale(s_lo, gs, FMT_NVFP4_SPREAD, 16384.0)
            sh = _block_scale(s_hi, gs, FMT_NVFP4_SPREAD, 16384.0)
        c_lo, c_hi = _spread_codes(code, BN, H)
        lo = (_e2m1_f16(c_lo).to(tl.float32) * _per_byte(sl, BN, H)).to(W_DTYPE)
        hi = (_e2m1_f16(c_hi).to(tl.float32) * _per_byte(sh, BN, H)).to(W_DTYPE)
    return lo, hi


@triton.jit
def _spread_tiles(w_base, s_base, n, k0, N, BLOCK_N: tl.constexpr, BK: tl.constexpr):
    """One chunk's code bytes [BLOCK_N, BK/2] and block-scale bytes of its low and high halves [BLOCK_N, BK/32]
    each. Storage is chunk-major (`e2m1_spread.store_codes`): chunk c of output row n starts at
    c * N * 64 + n * BK/2 (scales: c * N * 8 + n * BK/16), so the tile of BLOCK_N rows is one contiguous
    block; rows past N read as zero."""
    H: tl.constexpr = BK // 2
    nmask = (n < N)[:, None]
    chunk = k0 // _CHUNK_INPUTS
    code = tl.load(w_base + chunk * N * _CODE_BYTES + n[:, None] * H + tl.arange(0, H)[None, :], mask=nmask, other=0)
    s = tl.load(s_base + chunk * N * _SCALE_BYTES + n[:, None] * (BK // 16) + tl.arange(0, BK // 16)[None, :],
                mask=nmask, other=0)                                               # (low, high) block pairs
    s_lo, s_hi = tl.split(tl.reshape(s, (BLOCK_N, BK // 32, 2)))
    return code, s_lo, s_hi


@triton.jit
def _spread_acts(a_base, valid, k0, BK: tl.constexpr):
    """The chunk's two activation tiles [rows, BK/2]: inputs k0.. and k0+BK/2.. (invalid rows read as zero)."""
    cols = k0 + tl.arange(0, BK // 2)
    a_lo = tl.load(a_base + cols[None, :], mask=valid[:, None], other=0.0)
    a_hi = tl.load(a_base + BK // 2 + cols[None, :], mask=valid[:, None], other=0.0)
    return a_lo, a_hi


@triton.jit
def _spread_step(acc, a_base, valid, w_base, s_base, n, k0, N, gs,
                 BLOCK_N: tl.constexpr, BK: tl.constexpr, W_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
                 PRECISION: tl.constexpr, ASM: tl.constexpr, SWAP_AB: tl.constexpr):
    """acc += A[:, k0:k0+BK] @ W[k0:k0+BK, :] for one whole chunk of spread storage (BK = 128, or the 64
    tail; the kernel only passes chunks inside its K range, so no input is masked): its BK/2 code bytes
    decode to two operand tiles, inputs k0.. and k0+BK/2.., each its own dot, so the decoded registers feed
    the tensor cores without being regrouped. The chunk's block scales are one tile, stored in (low, high)
    pairs (`_spread_tiles`: one contiguous block of BLOCK_N rows). Every load of the main loop is a cp.async
    copy Triton pipelines (4 bytes or more a thread)."""
    code, s_lo, s_hi = _spread_tiles(w_base, s_base, n, k0, N, BLOCK_N, BK)
    a_lo, a_hi = _spread_acts(a_base, valid, k0, BK)
    a_lo, a_hi = a_lo.to(DOT_DTYPE), a_hi.to(DOT_DTYPE)
    lo, hi = _spread_decode(code, s_lo, s_hi, gs, BLOCK_N, BK // 2, W_DTYPE, ASM)
    if SWAP_AB:
        acc = tl.dot(lo.to(DOT_DTYPE), tl.trans(a_lo), acc, input_precision=PRECISION)
        acc = tl.dot(hi.to(DOT_DTYPE), tl.trans(a_hi), acc, input_precision=PRECISION)
    else:
        acc = tl.dot(a_lo, tl.trans(lo.to(DOT_DTYPE)), acc, input_precision=PRECISION)
        acc = tl.dot(a_hi, tl.trans(hi.to(DOT_DTYPE)), acc, input_precision=PRECISION)
    return acc
