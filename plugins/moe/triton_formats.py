"""The expert weight formats as the MoE kernels name them, and the plain E2M1 and block-scale decodes every
decode path shares (`plugins.moe.triton_kernels`, `plugins.moe.triton_spread`)."""

from __future__ import annotations

import triton
import triton.language as tl

FMT_BF16: tl.constexpr = tl.constexpr(0)
FMT_MXFP4: tl.constexpr = tl.constexpr(1)
FMT_NVFP4: tl.constexpr = tl.constexpr(2)
FMT_NVFP4_SPREAD: tl.constexpr = tl.constexpr(3)  # NVFP4, codes in `plugins.moe.e2m1_spread` order


@triton.jit
def _e2m1_f16(c):
    """E2M1 codes (low 4 bits) -> float16 values times 2**-14, exact: the magnitude bits go to float16 bits
    9..11 and the sign to bit 15 (code 1, 0.5, becomes a float16 subnormal)."""
    c = c.to(tl.int16)
    return (((c & 7) << 9) | ((c & 8) << 12)).to(tl.float16, bitcast=True)


@triton.jit
def _e4m3_over_256(raw):
    """E4M3 bytes -> their values / 256 in float32 (exact: the byte's bits placed in float16)."""
    raw = raw.to(tl.int32)
    bits = ((raw & 0x7F) << 7) | ((raw & 0x80) << 8)
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _block_scale(raw, gs, FMT: tl.constexpr, FACTOR: tl.constexpr):
    """Block scale bytes -> float32 scale times FACTOR (a power of two folded in for the decode)."""
    if FMT == FMT_MXFP4:  # E8M0: 2**(raw - 127), byte 0 is 2**-127 (a float32 subnormal)
        raw = raw.to(tl.int32)
        pow2 = tl.where(raw == 0, 0x00400000, raw << 23).to(tl.float32, bitcast=True)
        return pow2 * FACTOR
    else:  # E4M3 (NVFP4) times the global scale
        return (_e4m3_over_256(raw) * gs) * (256.0 * FACTOR)
