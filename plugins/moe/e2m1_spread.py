"""The kernel's own storage order for NVFP4 codes (`WeightFormat.NVFP4_SPREAD`), built so the CUDA decode of
4-bit weights to the bf16 tensor-core operand is as short as it can be: 13 instructions for 8 weights
(a rotate and a mask per pair of weights, one `mul.rn.bf16x2` by the block scale), against 26 for the
checkpoint's order, and no regrouping of the decoded values before the dot (`make bench-static`).

Along the input axis (K, a multiple of 64), each output row is cut into chunks of `CHUNK` = 128 inputs (the
last one 64 when K % 128 == 64). A chunk of S inputs takes S/2 bytes; byte j holds inputs j ("low half")
and S/2 + j ("high half") of the chunk, so one decode gives two operand tiles whose inputs run in order,
each the left operand of its own dot (`triton_spread._spread_step`). Each 4 bytes (one group: low inputs
4g..4g+3, high inputs S/2+4g..S/2+4g+3, group codes 0-3 and 4-7, one block scale for each four) are stored
with their 32 bits permuted (`SOURCE_BIT`), and the block scales of a chunk are stored in pairs (low-half
block b, high-half block b), so a thread's 4-byte scale load holds what its codes need (`spread_scales`).
The 32-bit permutation is such that:

* a bf16 word whose bits 6..8 hold an E2M1 magnitude (mantissa bit, then the two exponent bits) and bit
  15 its sign is that E2M1 value times 2**-126 (code 1, 0.5, lands on a subnormal, exactly), and the
  pattern `MASK` = {6, 7, 8, 15} and {22, 23, 24, 31} holds two of them;
* translates of that pattern cannot tile 32 bits (checked exhaustively by the tests), so three output
  words are one rotation and one mask each and the fourth takes its bits from two rotations (`WORDS`).

One multiply by the block scale times 2**126, rounded to bf16, then gives the weight rounded once. That
factor overflows bf16 for scales of 2 and more, so the kernel divides the global scale by a power of two
first (its exponent plus 9, leaving every block scale times it below 2**127) and multiplies the float32
accumulator back after the K loop; both steps are exact, so the result is bit-identical to the plain
storage's decode (`bf16_scale`). `WORDS` is the design; `SOURCE_BIT`, `PROGRAM` (emitted by `ptx()`) and the
CPU emulation in the tests are all derived from it.

Across output rows the storage is chunk-major (`store_codes`, `store_scales`): an expert's bytes hold chunk 0
of every output row, row after row, then chunk 1, and so on (the tail last, its rows half as long), so the
64 or 128 rows a GEMM program reads at one K step are one contiguous block. Stored row by row, that step
read 64-byte pieces 1440 bytes apart (gpt-oss), which an H100 streams at 0.62 of its copy rate against 0.96
for contiguous blocks (`bench_gpu.py --only access`, BENCHMARKS.md).
"""

from __future__ import annotations

import torch

CHUNK = 128              # inputs per storage chunk; the kernel's K step on this storage
TAIL = 64                # K % CHUNK may be 0 or this (K a multiple of 64)
MASK = 0x81C081C0        # the E2M1 bits of two bf16 values, at their exponent 2**-126
_PAIR_BITS = 0x01000100  # the fourth word's highest magnitude bits come from a second rotation
# out word i = OR over its terms of (rotate-left(group, r) & mask)
WORDS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, MASK),),
    ((4, MASK),),
    ((10, MASK),),
    ((6, MASK & ~_PAIR_BITS), (14, _PAIR_BITS)),
)
# group codes in out word i as (low bf16 half, high half): $0, $1 the low-half inputs 0-3, $2, $3 the
# high-half inputs 0-3 (the asm's two results, in input order)
OUT_CODES = ((0, 1), (2, 3), (4, 5), (6, 7))
_CODE_BIT_AT = (6, 7, 8, 15)  # code bit b (mantissa, exponent 0, exponent 1, sign) in a bf16 half


def _source_bits() -> tuple[tuple[int, ...], ...]:
    """SOURCE_BIT[c][b]: the bit of the stored 32-bit group that holds bit b of group code c (0..7)."""
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

# Operands: $0..$3 out, $4 the 4 stored bytes, $5/$6 the low half's bf16x2 scale (twice the same value),
# $7/$8 the high half's, each the block scale times 2**126 shifted as the module docstring says. Names
# are .b32 registers; ints are immediates.
PROGRAM: tuple[tuple, ...] = (
    ("and", "r", "$4", MASK), ("mul", "$0", "r", "$5"),
    ("rotl", "r", "$4", 4), ("and", "r", "r", MASK), ("mul", "$1", "r", "$5"),
    ("rotl", "r", "$4", 10), ("and", "r", "r", MASK), ("mul", "$2", "r", "$7"),
    ("rotl", "r", "$4", 6), ("rotl", "q", "$4", 14), ("and", "q", "q", _PAIR_BITS),
    ("lop3", "r", "q", "r", MASK & ~_PAIR_BITS, 0xF8),  # q | (r & mask)
    ("mul", "$3", "r", "$7"),
)
CONSTRAINTS = "=r,=r,=r,=r,r,r,r,r,r"
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
def check_global_scale(value: float, what: str) -> None:
    """The kernel splits the global scale into mantissa and exponent by its bits: it must be a positive
    normal float32."""
    f32 = torch.finfo(torch.float32)
    if not f32.tiny <= value <= f32.max:
        raise ValueError(f"{what} {value!r} is not a positive normal float32, which the spread storage needs; "
                         "keep this layer in nvfp4 (spread=False; TensorRT-LLM: TRTKIT_MOE_STORAGE=kmajor)")


def _check(codes: torch.Tensor, dim: int) -> None:
    if codes.dtype != torch.uint8 or (2 * codes.shape[dim]) % TAIL:
        raise ValueError(f"e2m1_spread: needs uint8 codes of a multiple of {TAIL} inputs ({TAIL // 2} bytes) "
                         f"along dim {dim}, got {codes.dtype} {tuple(codes.shape)}; keep such a layer in "
                         "nvfp4 (k_major(spread=False))")


def _chunks(k: int) -> list[int]:
    return [CHUNK] * (k // CHUNK) + ([TAIL] if k % CHUNK else [])


def _to_groups(nibbles: torch.Tensor) -> torch.Tensor:
    """Codes in input order [..., K] -> group codes [..., K/8, 8] (chunk by chunk, as the docstring says)."""
    parts, start = [], 0
    for size in _chunks(nibbles.shape[-1]):
        c = nibbles[..., start:start + size].unflatten(-1, (2, size // 8, 4))   # [..., half, group, i]
        parts.append(c.transpose(-3, -2).flatten(-2))                            # [..., group, half*4 + i]
        start += size
    return torch.cat(parts, dim=-2)


def _from_groups(groups: torch.Tensor) -> torch.Tensor:
    """The inverse of `_to_groups`."""
    parts, start = [], 0
    for size in _chunks(groups.shape[-2] * 8):
        g = groups[..., start:start + size // 8, :].unflatten(-1, (2, 4))       # [..., group, half, i]
        parts.append(g.transpose(-3, -2).flatten(-3))
        start += size // 8
    return torch.cat(parts, dim=-1)


_BLOCK_BYTES = 1 << 24  # code bytes converted at a time: the temporaries are ~10x that (gpt-oss-120b's
                       # gate_up is 1 GiB of codes a layer; converting it whole would need ~10 GiB more)


def _by_row_blocks(codes: torch.Tensor, dim: int, fn) -> torch.Tensor:
    """fn over [rows, L] blocks of codes (dim moved last, leading dims flattened), into one contiguous
    result with dim fastest, bounded temporaries."""
    x = codes.movedim(dim, -1)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.empty(flat.shape, dtype=torch.uint8, device=codes.device)
    step = max(1, _BLOCK_BYTES // max(1, flat.shape[1]))
    for r in range(0, flat.shape[0], step):
        out[r:r + step] = fn(flat[r:r + step])
    return out.view(x.shape).movedim(-1, dim)


def _spread_rows(x: torch.Tensor) -> torch.Tensor:
    nibbles = torch.stack([x & 0xF, x >> 4], dim=-1).flatten(-2)                  # [R, K]
    groups = _to_groups(nibbles).to(torch.int32)                                  # [R, K/8, 8]
    word = torch.zeros(groups.shape[:-1], dtype=torch.int32, device=x.device)
    for c, row in enumerate(SOURCE_BIT):
        for b, at in enumerate(row):
            word |= ((groups[..., c] >> b) & 1) << at                             # bit 31: int32 wraps
    return word.view(torch.uint8).view(x.shape)


def _unspread_rows(x: torch.Tensor) -> torch.Tensor:
    word = x.contiguous().view(torch.int32)                                       # [R, K/8]
    groups = torch.zeros(*word.shape, 8, dtype=torch.int32, device=x.device)
    for c, row in enumerate(SOURCE_BIT):
        for b, at in enumerate(row):
            groups[..., c] |= ((word >> at) & 1) << b
    nibbles = _from_groups(groups).to(torch.uint8)                                # [R, K]
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def spread(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """Packed E2M1 codes in the checkpoint's order (input 2j in the low nibble of byte j along dim) -> the
    spread order, same shape, contiguous with dim fastest; converted a block of rows at a time."""
    _check(codes, dim)
    return _by_row_blocks(codes, dim, _spread_rows)


def unspread(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of `spread`."""
    _check(codes, dim)
    return _by_row_blocks(codes, dim, _unspread_rows)

def _scale_order(blocks: int) -> torch.Tensor:
    """stored block i = plain block order[i]: per chunk (8 blocks; the tail 4) low-half and high-half blocks
    alternate."""
    order, start = [], 0
    for size in _chunks(blocks * 16):
        n = size // 16
        order += [start + i // 2 + (n // 2) * (i % 2) for i in range(n)]
        start += n
    return torch.tensor(order)


def spread_scales(scale: torch.Tensor, dim: int) -> torch.Tensor:
    """Block scales (any 1-byte dtype, one per 16 inputs along dim) in the checkpoint's order -> spread's."""
    order = _scale_order(scale.shape[dim]).to(scale.device)
    return scale.view(torch.uint8).index_select(dim, order).view(scale.dtype)


def unspread_scales(scale: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of `spread_scales`."""
    order = torch.argsort(_scale_order(scale.shape[dim])).to(scale.device)
    return scale.view(torch.uint8).index_select(dim, order).view(scale.dtype)


# ---- storage across rows: chunk-major -----------------------------------------------------------------
CODE_BYTES = CHUNK // 2     # a row's code bytes in one chunk (the tail: half)
SCALE_BYTES = CHUNK // 16   # a row's block-scale bytes in one chunk (the tail: half)


def _widths(k: int, per_chunk: int) -> list[int]:
    return [per_chunk * size // CHUNK for size in _chunks(k)]


def _chunk_major(rows: torch.Tensor, widths: list[int]) -> torch.Tensor:
    """[..., out, L] (any dtype of 1 byte) -> [..., L, out] contiguous, whose bytes are the chunks of `widths`
    along L, each [out, width] row after row."""
    b = rows.view(torch.uint8) if rows.dtype != torch.uint8 else rows
    parts, start = [], 0
    for w in widths:
        parts.append(b[..., start:start + w].flatten(-2))
        start += w
    return torch.cat(parts, dim=-1).view(*rows.shape[:-2], rows.shape[-1], rows.shape[-2]).view(rows.dtype)


def _row_major(stream: torch.Tensor, widths: list[int]) -> torch.Tensor:
    """The inverse of `_chunk_major`: [..., L, out] -> [..., out, L]."""
    out = stream.shape[-1]
    flat = (stream.view(torch.uint8) if stream.dtype != torch.uint8 else stream).flatten(-2)
    parts, start = [], 0
    for w in widths:
        parts.append(flat[..., start:start + out * w].unflatten(-1, (out, w)))
        start += out * w
    return torch.cat(parts, dim=-1).view(stream.dtype)


def store_codes(codes: torch.Tensor) -> torch.Tensor:
    """Packed codes in the checkpoint's order, rows [..., out, in/2] -> the storage: [..., in/2, out]
    contiguous, spread order within a row, chunk-major across rows."""
    return _chunk_major(spread(codes, -1), _widths(2 * codes.shape[-1], CODE_BYTES))


def load_codes(stored: torch.Tensor) -> torch.Tensor:
    """The inverse of `store_codes`: rows [..., out, in/2] in the checkpoint's order."""
    return unspread(_row_major(stored, _widths(2 * stored.shape[-2], CODE_BYTES)), -1)


def store_scales(scale: torch.Tensor) -> torch.Tensor:
    """Block scales in the checkpoint's order, rows [..., out, in/16] -> [..., in/16, out] contiguous, (low,
    high) pairs within a chunk, chunk-major across rows."""
    if (16 * scale.shape[-1]) % TAIL:
        raise ValueError(f"e2m1_spread: needs the block scales of a multiple of {TAIL} inputs along the last dim, "
                         f"got {tuple(scale.shape)}; keep such a layer in nvfp4 (k_major(spread=False))")
    return _chunk_major(spread_scales(scale, -1), _widths(16 * scale.shape[-1], SCALE_BYTES))


def load_scales(stored: torch.Tensor) -> torch.Tensor:
    """The inverse of `store_scales`."""
    return unspread_scales(_row_major(stored, _widths(16 * stored.shape[-2], SCALE_BYTES)), -1)
