"""MXFP4 (OCP microscaling), the format gpt-oss ships its expert weights in.

A block is 32 consecutive elements along the input axis: 16 bytes of packed E2M1 codes (element 2i in the
low nibble) and one E8M0 scale byte ``s`` meaning ``2**(s - 127)``. Byte 0xFF is NaN in the OCP spec.
"""

from __future__ import annotations

import torch

from .e2m1 import ENCODABLE_DTYPES, decode_packed_e2m1, encode_e2m1, nonfinite_index, pack_nibbles_unchecked

MXFP4_BLOCK = 32
MXFP4_BLOCK_BYTES = MXFP4_BLOCK // 2
E8M0_BIAS = 127
E8M0_NAN = 0xFF
_DECODE_CHUNK_BLOCKS = 1 << 16  # blocks per chunk: float32 temporaries of 8 MiB


def check_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, fn: str) -> None:
    """ValueError unless blocks is uint8 [..., G, 16] and scales uint8 [..., G]."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"{fn}: blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.ndim < 2 or blocks.shape[-1] != MXFP4_BLOCK_BYTES or blocks.shape[:-1] != scales.shape:
        raise ValueError(
            f"{fn}: blocks {tuple(blocks.shape)} must be [..., G, {MXFP4_BLOCK_BYTES}] and scales "
            f"{tuple(scales.shape)} must be [..., G] with the same leading dimensions"
        )


def decode_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """uint8 blocks [..., G, 16] + E8M0 scales [..., G] -> values [..., G*32] in ``dtype``.

    Bit-identical to transformers' ``convert_moe_packed_tensors(blocks, scales, dtype=dtype)`` before its
    final transpose: ``torch.ldexp(value(code), s - 127)`` in float32, then one cast to ``dtype``. ldexp is
    exact, so scale byte 0xFF (NaN in E8M0) decodes as transformers does: +-0 stays +-0, +-0.5 becomes
    +-2**127 and larger codes +-inf.
    """
    check_mxfp4(blocks, scales, "decode_mxfp4")
    flat_blocks = blocks.reshape(-1, MXFP4_BLOCK_BYTES)  # [B, 16]
    exponent = scales.reshape(-1, 1).to(torch.int32) - E8M0_BIAS  # [B, 1]
    out = torch.empty(flat_blocks.shape[0], MXFP4_BLOCK, dtype=dtype, device=blocks.device)  # [B, 32]
    for b0 in range(0, flat_blocks.shape[0], _DECODE_CHUNK_BLOCKS):
        rs = slice(b0, b0 + _DECODE_CHUNK_BLOCKS)
        out[rs] = torch.ldexp(decode_packed_e2m1(flat_blocks[rs]), exponent[rs])  # float32, cast on copy
    return out.reshape(*scales.shape[:-1], scales.shape[-1] * MXFP4_BLOCK)  # [..., G*32]


def decode_mxfp4_reference(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """Readable twin of ``decode_mxfp4``: sign * magnitude * 2**k, exact in float64, then cast."""
    check_mxfp4(blocks, scales, "decode_mxfp4_reference")
    low, high = (blocks & 0x0F).long(), (blocks >> 4).long()  # [..., G, 16] each
    codes = torch.stack((low, high), dim=-1).flatten(-2)  # [..., G, 32]
    magnitude = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)[codes & 7]
    sign = 1.0 - 2.0 * (codes >> 3)  # +1 / -1; -1 * 0.0 is -0.0 for code 8
    k = scales.long() - E8M0_BIAS  # [..., G]
    values = sign * magnitude * torch.pow(2.0, k.double()).unsqueeze(-1)  # [..., G, 32] float64, exact
    return values.to(torch.float32).to(dtype).flatten(-2)


def e8m0_exponent(amax: torch.Tensor) -> torch.Tensor:
    """int32 k = ceil(log2(amax / 6)), computed exactly: the smallest k with amax <= 6 * 2**k.

    With amax = m * 2**e (frexp, 0.5 <= m < 1): k = e - 3 if m <= 0.75 else e - 2. amax == 0 gives -127,
    and k is clamped to the E8M0 range [-127, 127].
    """
    mantissa, exponent = torch.frexp(amax.float())
    k = exponent - 3 + (mantissa > 0.75).to(torch.int32)
    k = k.masked_fill(amax == 0, -E8M0_BIAS)
    return k.clamp(-E8M0_BIAS, E8M0_BIAS)


def encode_mxfp4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain MXFP4 quantizer for synthetic data: x [..., K] -> (blocks [..., K/32, 16], scales [..., K/32]).

    Scale 2**k with k = ceil(log2(amax / 6)) computed exactly (``e8m0_exponent``), so a block's largest
    magnitude lands in (3, 6]; codes are E2M1 round-to-nearest-even of ``x / 2**k`` (``encode_e2m1``).
    An all-zero block (and one with amax <= 6 * 2**-127) gets scale byte 0, i.e. k = -127.

    Versus ModelOpt's ``MXFP4QTensor.quantize``: same scale rule, but ModelOpt takes ceil(log2(amax/6)) in
    float32, so when amax/6 is within float32 rounding of a power of two it may pick a scale one lower
    (its block maximum then saturates at 6); it rounds ties at 0.75, 1.75 and 3.5 DOWN (to 0.5, 1.5, 3)
    where we round to the even code; and it encodes 0 as code 8 (-0) where we write code 0. Decoded
    values agree everywhere else.
    """
    if x.dtype not in ENCODABLE_DTYPES:
        raise ValueError(f"encode_mxfp4: x must be one of {ENCODABLE_DTYPES}, got {x.dtype}")
    if x.ndim == 0 or x.shape[-1] % MXFP4_BLOCK:
        raise ValueError(
            f"encode_mxfp4: last dimension of {tuple(x.shape)} is not a multiple of {MXFP4_BLOCK}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"encode_mxfp4: non-finite value at index {nonfinite_index(x)}")
    blocks = x.float().reshape(*x.shape[:-1], -1, MXFP4_BLOCK)  # [..., G, 32]
    k = e8m0_exponent(blocks.abs().amax(dim=-1))  # [..., G]
    codes = encode_e2m1(blocks / torch.exp2(k.float()).unsqueeze(-1))  # [..., G, 32]
    return pack_nibbles_unchecked(codes), (k + E8M0_BIAS).to(torch.uint8)
