"""The kernel's own bit order for NVFP4 codes (`WeightFormat.NVFP4_SPREAD`): each group of 4 bytes (8 codes
along the input axis, one block scale) is stored with its 32 bits permuted so that the decode to bfloat16
is a rotate and a mask per pair of weights and one `mul.rn.bf16x2` by the block scale: 13 instructions for 8
weights, against 26 for the checkpoint's order (two shifts and two masks per pair, then two multiplies).

Why it works: a bf16 word whose bits 6..8 hold an E2M1 magnitude (mantissa bit, then the two exponent bits)
and bit 15 its sign is that E2M1 value times 2**-126 (code 1, 0.5, lands on a subnormal, exactly). One
multiply by the block scale times 2**126, rounded to bf16, gives the weight rounded once. That factor
overflows bf16 for scales of 2 and more, so the kernel divides the global scale by a power of two first
(its exponent plus 9, leaving every block scale times it below 2**127) and multiplies the float32
accumulator back after the K loop: both are exact, so the result is bit-identical to the plain decode.

A 32-bit word holds 4 such bf16 pairs, at bits `MASK` = {6, 7, 8, 15} and {22, 23, 24, 31}. Translates of
that pattern cannot tile 32 bits (checked exhaustively), so three output words are one rotation and one
mask each and the fourth takes its bits from two rotations. `WORDS` is the design; `SOURCE_BIT` (where each
code's bits are stored), `PROGRAM` (what runs on the GPU, emitted by `ptx()`) and the CPU emulation in the
tests are all derived from it.

Output order (that of the other inline-asm decodes, `triton_kernels._e2m1_bf16_asm`): $0 = codes (0, 2),
$1 = (4, 6), $2 = (1, 3), $3 = (5, 7) of the group, the first of each pair in the low half; code 2j is the
low nibble of the checkpoint's byte j, 2j + 1 its high nibble.
"""

from __future__ import annotations

import torch

MASK = 0x81C081C0        # the E2M1 bits of two bf16 values, at their exponent 2**-126
_PAIR_BITS = 0x01000100  # the fourth word's highest magnitude bits come from a second rotation
# out word i = OR over its terms of (rotate-left(group, r) & mask)
WORDS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, MASK),),
    ((4, MASK),),
    ((10, MASK),),
    ((6, MASK & ~_PAIR_BITS), (14, _PAIR_BITS)),
)
OUT_CODES = ((0, 2), (4, 6), (1, 3), (5, 7))  # codes of the group in out word i, (low half, high half)
_CODE_BIT_AT = (6, 7, 8, 15)                   # code bit b (mantissa, exponent 0, exponent 1, sign) in a half


def _source_bits() -> tuple[tuple[int, ...], ...]:
    """SOURCE_BIT[c][b]: the bit of the stored 32-bit group that holds bit b of code c (0..7)."""
    table = [[-1] * 4 for _ in range(8)]
    for word, terms in enumerate(WORDS):
        for half, code in enumerate(OUT_CODES[word]):
            for b, at in enumerate(_CODE_BIT_AT):
                pos = at + 16 * half
                rot = next(r for r, mask in terms if mask >> pos & 1)
                table[code][b] = (pos - rot) % 32
    if sorted(s for row in table for s in row) != list(range(32)):
        raise AssertionError("e2m1_spread.WORDS is not a permutation of 32 bits")
    return tuple(tuple(row) for row in table)


SOURCE_BIT = _source_bits()

# Operands: $0..$3 out, $4 the 4 stored bytes, $5 (and $6, the same value) the bf16x2 scale times 2**126
# (shifted as the module docstring says). Names are .b32 registers; ints are immediates.
PROGRAM: tuple[tuple, ...] = (
    ("and", "r", "$4", MASK), ("mul", "$0", "r", "$5"),
    ("rotl", "r", "$4", 4), ("and", "r", "r", MASK), ("mul", "$1", "r", "$5"),
    ("rotl", "r", "$4", 10), ("and", "r", "r", MASK), ("mul", "$2", "r", "$5"),
    ("rotl", "r", "$4", 6), ("rotl", "q", "$4", 14), ("and", "q", "q", _PAIR_BITS),
    ("lop3", "r", "q", "r", MASK & ~_PAIR_BITS, 0xF8),  # q | (r & mask)
    ("mul", "$3", "r", "$5"),
)
CONSTRAINTS = "=r,=r,=r,=r,r,r,r"
_PTX = {"and": "and.b32 {0}, {1}, {2}", "mul": "mul.rn.bf16x2 {0}, {1}, {2}",
        "rotl": "shf.l.wrap.b32 {0}, {1}, {1}, {2}", "lop3": "lop3.b32 {0}, {1}, {2}, {3}, {4}"}


def ptx() -> str:
    """`PROGRAM` as the body of one inline-asm block (operands as `CONSTRAINTS` lists them)."""
    lines = ["{", ".reg .b32 r, q;"]
    for op, *args in PROGRAM:
        lines.append(_PTX[op].format(*(a if isinstance(a, str) else f"{a:#x}" for a in args)) + ";")
    lines.append("}")
    return "\n".join(lines)


# ---- storage: checkpoint order <-> spread order, on any device ----------------------------------------
def _moves(to_spread: bool) -> dict[int, int]:
    """{shift: mask}: stored = OR over shifts of (plain shifted left by `shift`) & mask (the inverse when
    not to_spread); a plain group holds code c's bit b at bit 4c + b."""
    moves: dict[int, int] = {}
    for code, row in enumerate(SOURCE_BIT):
        for b, stored in enumerate(row):
            src, dst = (4 * code + b, stored) if to_spread else (stored, 4 * code + b)
            moves[dst - src] = moves.get(dst - src, 0) | (1 << dst)
    return moves


def _permute(codes: torch.Tensor, dim: int, to_spread: bool) -> torch.Tensor:
    if codes.dtype != torch.uint8 or codes.shape[dim] % 4:
        raise ValueError(f"e2m1_spread: codes must be uint8 with a multiple of 4 bytes along dim {dim}, got "
                         f"{codes.dtype} {tuple(codes.shape)}")
    x = codes.movedim(dim, -1).contiguous()
    words = x.view(torch.int32)                                          # [..., L/4] little-endian groups
    out = torch.zeros_like(words)
    for shift, mask in _moves(to_spread).items():
        signed = mask - (1 << 32) if mask >= 1 << 31 else mask           # int32 immediates
        moved = words << shift if shift >= 0 else words >> -shift        # arithmetic >>: masked off below
        out |= moved & signed
    return out.view(torch.uint8).view(x.shape).movedim(-1, dim)


def spread(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """Packed E2M1 codes (checkpoint order, groups of 4 bytes consecutive along dim) -> spread order."""
    return _permute(codes, dim, to_spread=True)


def unspread(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of `spread`."""
    return _permute(codes, dim, to_spread=False)
