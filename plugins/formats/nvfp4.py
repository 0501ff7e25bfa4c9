"""NVFP4: E2M1 codes in blocks of 16 with an E4M3 block scale and one FP32 global scale.

Bit-identical to ModelOpt 0.47 ``NVFP4QTensor.quantize(x, 16, block_scale, global_scale)`` (same op
order and dtypes), with these intentional differences, all for inputs where ModelOpt emits NaN/Inf:

* all-zero tensor (global scale 0): ModelOpt writes NaN block scales (0/0) and codes 0x7 (6 * NaN); we
  write block scales 1.0, codes 0 and global scale 0.0, which dequantizes to zeros.
* NaN/Inf in x, a global scale that is negative/non-finite, or 0 for a non-zero tensor, a block scale whose
  product with the global scale is 0 or NaN (only when amax(|x|) < ~1e-38): ValueError instead of
  garbage codes.
"""

from __future__ import annotations

import torch

from .e2m1 import (
    E2M1_VALUES,
    ENCODABLE_DTYPES,
    byte_value_table,
    decode_packed_e2m1,
    encode_e2m1_f32,
    encode_e2m1_reference,
    nonfinite_index,
    pack_nibbles_reference,
    pack_nibbles_unchecked,
)

NVFP4_BLOCK = 16
E4M3_MAX = 448.0
E2M1_MAX = 6.0
E4M3_MIN_SCALE = 2.0**-9  # smallest positive E4M3 value; ModelOpt clamps block scales to [2**-9, 448]
_CHUNK_ELEMENTS = 1 << 19  # rows per chunk ~ 512K elements: temporaries stay cache-sized (2 MiB float32)
# ModelOpt's dequantize table holds +0 at code 8 (E2M1 -0); -0.0 + 0.0 is +0.0, every other value is kept.
_DEQUANT_BYTE_VALUES = byte_value_table(E2M1_VALUES + 0.0)  # [256, 2] float32


def _row_chunks(n: int, k: int):
    """Row slices of about _CHUNK_ELEMENTS elements each, so per-chunk temporaries stay small."""
    step = max(1, _CHUNK_ELEMENTS // k)
    return (slice(r0, min(n, r0 + step)) for r0 in range(0, n, step))


_SIGN_CLEARED = {torch.float32: (torch.int32, 0x7FFFFFFF), torch.bfloat16: (torch.int16, 0x7FFF),
                 torch.float16: (torch.int16, 0x7FFF)}  # fmt: skip


def _block_amax(rows: torch.Tensor) -> torch.Tensor:
    """max |x| per block of 16 as float32 (NaN propagates): [N, K] -> [N, K/16].

    Same values as ModelOpt's reduce_block_amax, computed on |x|'s bit pattern (integer order is value
    order for non-negative floats, NaN above Inf) with a halving tree of elementwise maxima: ~3x faster on
    CPU than a float reduction over a 16-wide last axis.
    """
    n, k = rows.shape
    int_dtype, magnitude_mask = _SIGN_CLEARED[rows.dtype]
    out = torch.empty(n, k // NVFP4_BLOCK, dtype=torch.float32, device=rows.device)  # [N, K/16]
    for rs in _row_chunks(n, k):
        a = rows[rs].reshape(-1, NVFP4_BLOCK).view(int_dtype) & magnitude_mask  # [r*K/16, 16] |x| bits
        while a.shape[-1] > 1:
            half = a.shape[-1] // 2
            a = torch.maximum(a[:, :half], a[:, half:])
        out[rs] = a.view(rows.dtype).view(rs.stop - rs.start, -1)
    return out


def scale_from_amax(amax: torch.Tensor | float) -> torch.Tensor:
    """ModelOpt's per-tensor NVFP4 scale, float32 0-d ``float32(amax) / (6 * 448)``: the weights'
    ``weight_scale_2`` and the activations' ``input_scale`` alike."""
    return torch.as_tensor(amax).float().reshape(()) / (E2M1_MAX * E4M3_MAX)


def _block_scale_from_amax(block_amax: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """ModelOpt's dynamic block scale: amax / (6 * global), 0 -> 1, clamp to [2**-9, 448], cast to E4M3."""
    scale = block_amax / (E2M1_MAX * global_scale)
    scale = scale.masked_fill(scale == 0, 1.0)
    return scale.clamp(min=E4M3_MIN_SCALE, max=E4M3_MAX).to(torch.float8_e4m3fn)


def nvfp4_global_scale(x: torch.Tensor) -> torch.Tensor:
    """float32 0-d ``amax(|x|) / (6 * 448)``, as ModelOpt's ``get_weights_scaling_factor_2``."""
    lo, hi = torch.aminmax(x)
    amax = torch.maximum(lo.abs(), hi.abs())
    if not torch.isfinite(amax):
        raise ValueError(f"non-finite value at index {nonfinite_index(x)}")
    return scale_from_amax(amax)


def encode_nvfp4(rows: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """Packed E2M1 codes of ``rows / divisor`` per block of 16: [N, K], float32 [N, K/16] -> uint8 [N, K/2].

    The division is done in float32 exactly as ModelOpt does it (no reciprocal). ``rows`` may hold +-Inf
    (codes saturate) but no NaN, and ``divisor`` must be positive; callers check both.
    """
    n, k = rows.shape
    out = torch.empty(n, k // 2, dtype=torch.uint8, device=rows.device)  # [N, K/2]
    for rs in _row_chunks(n, k):
        blocks = rows[rs].reshape(-1, k // NVFP4_BLOCK, NVFP4_BLOCK)  # [r, K/16, 16]
        scaled = blocks / divisor[rs].unsqueeze(-1)  # [r, K/16, 16] float32
        out[rs] = pack_nibbles_unchecked(encode_e2m1_f32(scaled).view(-1, k))
    return out


def _check_input(x: torch.Tensor) -> int:
    if x.dtype not in ENCODABLE_DTYPES:
        raise ValueError(f"quantize_nvfp4: x must be one of {ENCODABLE_DTYPES}, got {x.dtype}")
    if x.ndim == 0 or x.numel() == 0:
        raise ValueError(f"quantize_nvfp4: x must be a non-empty tensor [..., K], got shape {tuple(x.shape)}")
    k = x.shape[-1]
    if k % NVFP4_BLOCK:
        raise ValueError(f"quantize_nvfp4: K={k} (last dimension) is not a multiple of {NVFP4_BLOCK}")
    return k


def _check_global_scale(global_scale: torch.Tensor) -> torch.Tensor:
    if global_scale.dtype != torch.float32 or global_scale.numel() != 1:
        raise ValueError(
            "quantize_nvfp4: global_scale must be a float32 scalar tensor, got "
            f"{global_scale.dtype} of shape {tuple(global_scale.shape)}"
        )
    gs = global_scale.reshape(())
    if not torch.isfinite(gs) or gs < 0:
        raise ValueError(f"quantize_nvfp4: global_scale must be finite and >= 0, got {float(gs)}")
    return gs


def _check_block_scale(block_scale: torch.Tensor, shape: tuple[int, ...]) -> None:
    if block_scale.dtype != torch.float8_e4m3fn or tuple(block_scale.shape) != shape:
        raise ValueError(
            f"quantize_nvfp4: block_scale must be float8_e4m3fn of shape {shape}, got "
            f"{block_scale.dtype} of shape {tuple(block_scale.shape)}"
        )


def quantize_nvfp4(
    x: torch.Tensor,
    global_scale: torch.Tensor | None = None,
    block_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize x [..., K] (float32/bf16/fp16) to NVFP4 along its last axis.

    Returns (packed uint8 [..., K/2], block_scale float8_e4m3fn [..., K/16], global_scale float32 0-d),
    bit-identical to ModelOpt's ``NVFP4QTensor.quantize(x, 16, block_scale, global_scale)``; see the
    module docstring for the all-zero convention and the inputs rejected with ValueError. x is not modified.
    """
    k = _check_input(x)
    rows = x.reshape(-1, k)  # [N, K]
    scale_shape = (*x.shape[:-1], k // NVFP4_BLOCK)
    block_amax = _block_amax(rows)  # [N, K/16] float32
    amax = block_amax.max()
    if not torch.isfinite(amax):
        raise ValueError(f"non-finite value at index {nonfinite_index(x)}")
    gs = scale_from_amax(amax) if global_scale is None else _check_global_scale(global_scale)
    if block_scale is not None:
        _check_block_scale(block_scale, scale_shape)
    if gs == 0:
        return _quantize_zero_global_scale(x, amax, gs, block_scale, scale_shape)
    if block_scale is None:
        block_scale = _block_scale_from_amax(block_amax, gs).reshape(scale_shape)
    divisor = block_scale.to(torch.float32).reshape(rows.shape[0], -1) * gs  # [N, K/16]
    if not bool((divisor > 0).all()):
        raise ValueError(
            f"quantize_nvfp4: block_scale * global_scale is 0 or NaN (global scale {float(gs)!r}); "
            "the tensor's dynamic range is below what NVFP4 scales can express"
        )
    packed = encode_nvfp4(rows, divisor)  # [N, K/2]
    return packed.reshape(*x.shape[:-1], k // 2), block_scale, gs


def _quantize_zero_global_scale(x, amax, gs, block_scale, scale_shape):
    """Global scale 0: only an all-zero x is representable (codes 0, block scales 1.0 unless given)."""
    if amax != 0:
        raise ValueError(
            f"quantize_nvfp4: global scale is 0 but amax(|x|) = {float(amax)!r}; "
            "a non-zero tensor needs a positive global scale"
        )
    packed = torch.zeros(*x.shape[:-1], x.shape[-1] // 2, dtype=torch.uint8, device=x.device)
    if block_scale is None:
        block_scale = torch.ones(scale_shape, device=x.device).to(torch.float8_e4m3fn)
    return packed, block_scale, gs


def quantize_nvfp4_reference(
    x: torch.Tensor,
    global_scale: torch.Tensor | None = None,
    block_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Readable twin of ``quantize_nvfp4`` for valid inputs (finite x, K % 16 == 0)."""
    blocks = x.reshape(*x.shape[:-1], -1, NVFP4_BLOCK)  # [..., K/16, 16]
    block_amax = blocks.abs().amax(dim=-1).float()  # [..., K/16]
    gs = x.abs().max().float() / (E2M1_MAX * E4M3_MAX) if global_scale is None else global_scale.reshape(())
    if gs == 0:  # all-zero tensor: our convention instead of ModelOpt's NaN scales
        scale = torch.ones_like(block_amax).to(torch.float8_e4m3fn) if block_scale is None else block_scale
        return torch.zeros(*x.shape[:-1], x.shape[-1] // 2, dtype=torch.uint8), scale, gs
    if block_scale is None:
        block_scale = _block_scale_from_amax(block_amax, gs)
    scaled = blocks / (block_scale.float() * gs).unsqueeze(-1)  # [..., K/16, 16] float32
    codes = encode_e2m1_reference(scaled.reshape(x.shape))  # [..., K]
    return pack_nibbles_reference(codes), block_scale, gs


def _check_dequantize_args(packed, block_scale, global_scale) -> None:
    if packed.dtype != torch.uint8 or packed.ndim == 0:
        raise ValueError(f"dequantize_nvfp4: packed must be uint8 [..., K/2], got {packed.dtype}")
    expected = (*packed.shape[:-1], packed.shape[-1] * 2 // NVFP4_BLOCK)
    if packed.shape[-1] % (NVFP4_BLOCK // 2) or tuple(block_scale.shape) != expected:
        raise ValueError(
            f"dequantize_nvfp4: packed {tuple(packed.shape)} needs block_scale of shape {expected}, "
            f"got {tuple(block_scale.shape)}"
        )
    if block_scale.dtype != torch.float8_e4m3fn:
        raise ValueError(f"dequantize_nvfp4: block_scale must be float8_e4m3fn, got {block_scale.dtype}")
    if global_scale.dtype != torch.float32 or global_scale.numel() != 1:
        raise ValueError("dequantize_nvfp4: global_scale must be a float32 scalar tensor")


def dequantize_nvfp4(
    packed: torch.Tensor,
    block_scale: torch.Tensor,
    global_scale: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 [..., K/2], e4m3 [..., K/16], float32 0-d -> [..., K] in ``dtype``.

    Bit-identical to ModelOpt's ``NVFP4QTensor.dequantize``: value(code) * (float(block) * global) in
    float32, then one cast to ``dtype``; code 8 (-0) gives +0.0 as ModelOpt's table does.
    """
    _check_dequantize_args(packed, block_scale, global_scale)
    values = decode_packed_e2m1(packed, _DEQUANT_BYTE_VALUES)  # [..., K] float32
    scale = block_scale.to(torch.float32) * global_scale.reshape(())  # [..., K/16]
    blocks = values.reshape(*values.shape[:-1], -1, NVFP4_BLOCK) * scale.unsqueeze(-1)  # [..., K/16, 16]
    return blocks.reshape(values.shape).to(dtype)
