"""E2M1, the 4-bit float element shared by MXFP4 and NVFP4.

A code is ``sign << 3 | index``: ``index`` picks a magnitude from ``E2M1_MAGNITUDES``, so code 8 is -0.0.
Encoding rounds to nearest with ties to the even code, saturates at +-6, and sets the sign bit iff
``x < 0`` (so -0.0 -> 0x0 and -0.1 -> 0x8), exactly as ModelOpt's ``NVFP4QTensor._cast_fp4``.
Two codes share a byte: element 2i in the low nibble, element 2i+1 in the high nibble.
"""

from __future__ import annotations

import struct
import sys

import torch

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# [16] float32, indexed by code; -m for m == 0.0 is -0.0, so code 8 decodes to -0.0.
E2M1_VALUES = torch.tensor([*E2M1_MAGNITUDES, *(-m for m in E2M1_MAGNITUDES)], dtype=torch.float32)

ENCODABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _f32_bits(value: float) -> int:
    return struct.unpack("<i", struct.pack("<f", value))[0]


# E2M1 magnitudes form three runs of constant spacing: [0, 2] in steps of 0.5, [2, 4] in steps of 1 and
# [4, 6] in steps of 2. Adding a float32 "magic" number whose ulp equals the step rounds a value in that run
# to a whole number of steps in ONE IEEE round-to-nearest-even addition; the sum's bit pattern minus the
# magic number's is that number of steps. Each row: (run start, run end, magic number, steps below start).
_RUNS = tuple(
    (lo, hi, magic, _f32_bits(magic) + steps_below)
    for lo, hi, magic, steps_below in ((0.0, 2.0, 2.0**22, 0), (2.0, 4.0, 2.0**23, 2), (4.0, 6.0, 2.0**24, 2))
)


def nonfinite_index(x: torch.Tensor, what: str = "non-finite") -> tuple[int, ...] | None:
    """Index (a tuple) of the first NaN/Inf (``what="NaN"``: first NaN) of ``x`` in row-major order, or None."""
    bad = torch.isnan(x) if what == "NaN" else ~torch.isfinite(x)
    flat = torch.nonzero(bad.reshape(-1))
    if flat.numel() == 0:
        return None
    return tuple(int(i) for i in torch.unravel_index(flat[0, 0], x.shape))


def _check_encodable(x: torch.Tensor, fn: str) -> None:
    if x.dtype not in ENCODABLE_DTYPES:
        raise ValueError(f"{fn}: expected one of {ENCODABLE_DTYPES}, got {x.dtype}")


def _magnitude_index(mag: torch.Tensor) -> torch.Tensor:
    """int32 E2M1 magnitude index of ``mag`` (float32, >= 0, no NaN; +inf saturates to 7)."""
    index = None
    for lo, hi, magic, base in _RUNS:
        steps = mag.clamp(lo, hi).add_(magic).view(torch.int32).sub_(base)  # steps taken inside this run
        index = steps if index is None else index.add_(steps)
    return index


def encode_e2m1_f32(scaled: torch.Tensor) -> torch.Tensor:
    """uint8 E2M1 codes of a float32 tensor that holds no NaN (the fast path; callers check NaN)."""
    bits = scaled.view(torch.int32)
    mag_bits = bits & 0x7FFFFFFF
    index = _magnitude_index(mag_bits.view(torch.float32))
    # Bit 31 of bits & -mag_bits is set iff the sign bit is set AND |x| > 0, i.e. iff x < 0.
    sign = mag_bits.neg_().bitwise_and_(bits).bitwise_right_shift_(28).bitwise_and_(0x8)  # in place
    return index.bitwise_or_(sign).to(torch.uint8)


def encode_e2m1(x: torch.Tensor) -> torch.Tensor:
    """uint8 E2M1 codes of ``x`` (float32/bf16/fp16), same shape; raises ValueError on NaN."""
    _check_encodable(x, "encode_e2m1")
    if torch.isnan(x).any():
        raise ValueError(f"encode_e2m1: NaN at index {nonfinite_index(x, 'NaN')}")
    return encode_e2m1_f32(x.float().contiguous())


def encode_e2m1_reference(x: torch.Tensor) -> torch.Tensor:
    """Readable twin of ``encode_e2m1``: nearest magnitude, ties to the even index, sign iff x < 0."""
    _check_encodable(x, "encode_e2m1_reference")
    if torch.isnan(x).any():
        raise ValueError(f"encode_e2m1_reference: NaN at index {nonfinite_index(x, 'NaN')}")
    xf = x.float()
    magnitudes = E2M1_VALUES[:8]  # [8]
    # Clamping to 6 makes every distance below exact (Sterbenz), so ties are detected exactly.
    dist = (xf.abs().clamp(max=6.0).unsqueeze(-1) - magnitudes).abs()  # [..., 8]
    nearest = dist == dist.amin(dim=-1, keepdim=True)  # [..., 8], two True on a tie
    even_first = torch.tensor([2, 1, 2, 1, 2, 1, 2, 1])  # a tie is between one even and one odd index
    index = (nearest * even_first).argmax(dim=-1)  # [...]
    return (index | ((xf < 0).long() << 3)).to(torch.uint8)


def decode_e2m1(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values of uint8 E2M1 codes (0..15), same shape, in ``dtype``."""
    _check_codes(codes, "decode_e2m1")
    return E2M1_VALUES.to(codes.device)[codes.long()].to(dtype)


def _check_codes(codes: torch.Tensor, fn: str) -> None:
    if codes.dtype != torch.uint8:
        raise ValueError(f"{fn}: codes must be uint8, got {codes.dtype}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"{fn}: codes must be 0..15, got max {int(codes.max())}")


def byte_value_table(code_values: torch.Tensor) -> torch.Tensor:
    """[16] values by code -> [256, 2]: the values of a byte's low and high nibble, for every byte."""
    byte = torch.arange(256)
    return torch.stack((code_values[byte & 0x0F], code_values[byte >> 4]), dim=-1)


E2M1_BYTE_VALUES = byte_value_table(E2M1_VALUES)  # [256, 2] float32


def decode_packed_e2m1(packed: torch.Tensor, table: torch.Tensor = E2M1_BYTE_VALUES) -> torch.Tensor:
    """float32 values of packed uint8 [..., n] -> [..., 2n], one table lookup per byte (int32 index)."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"decode_packed_e2m1: expected uint8, got {packed.dtype}")
    return table.to(packed.device)[packed.int()].flatten(-2)  # [..., n, 2] -> [..., 2n]


def pack_nibbles_unchecked(codes: torch.Tensor) -> torch.Tensor:
    """``pack_nibbles`` without validation: uint8 codes [..., 2n] (each < 16) -> uint8 [..., n]."""
    if sys.byteorder != "little":
        return codes[..., 0::2] | (codes[..., 1::2] << 4)
    # Little-endian int16 view of a byte pair: element 2i is the low byte, element 2i+1 the high byte.
    pairs = codes.contiguous().view(torch.int16)  # [..., n]
    return ((pairs & 0x0F) | ((pairs >> 4) & 0xF0)).to(torch.uint8)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [..., 2n] -> uint8 [..., n]; element 2i in the low nibble, 2i+1 in the high nibble."""
    _check_codes(codes, "pack_nibbles")
    if codes.ndim == 0 or codes.shape[-1] % 2:
        raise ValueError(f"pack_nibbles: last dimension must be even, got shape {tuple(codes.shape)}")
    return pack_nibbles_unchecked(codes)


def pack_nibbles_reference(codes: torch.Tensor) -> torch.Tensor:
    """Readable twin of ``pack_nibbles``."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., n] -> uint8 codes [..., 2n] (low nibble first)."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_nibbles: expected uint8, got {packed.dtype}")
    if packed.ndim == 0:
        raise ValueError("unpack_nibbles: expected at least one dimension")
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)  # [..., n, 2] -> [..., 2n]
