"""The spread storage and its decode (`plugins.moe.e2m1_spread`, `WeightFormat.NVFP4_SPREAD`) on CPU: where
`spread()` puts every input's code (against the layout written out independently here), and the PROGRAM
table, the one `ptx()` emits, run with the PTX ISA's definitions (`tests/ptx_emulator.py`) on stored
groups, against the E2M1 values of `plugins.formats` times the bf16 scale rounded once, bit for bit, for
every code pair in every position. The PTX itself is assembled by ptxas in tests/test_moe_pipelining.py."""

from __future__ import annotations

import itertools

import ptx_emulator
import pytest
import torch
from ptx_emulator import bf16_bits

from plugins.formats.e2m1 import decode_e2m1
from plugins.moe import e2m1_spread


def _scales() -> list[int]:
    """bf16 bit patterns of block scales times 2**126 as the kernel passes them: from the smallest an NVFP4
    block can have (E4M3 subnormal 2**-9 times 2**117) to the largest (below 2**127), and random between."""
    g = torch.Generator().manual_seed(0)
    exps = torch.cat([torch.tensor([108.0, 117.0, 126.0, 126.99]), torch.rand(12, generator=g) * 19 + 108])
    return bf16_bits(torch.exp2(exps.double()))


def expected(codes: list[int], scale_bits: int) -> list[int]:
    """bf16 bits of E2M1 code c times scale * 2**-126, rounded once, for each code."""
    scale = torch.tensor([scale_bits], dtype=torch.int32).to(torch.int16).view(torch.bfloat16).double()
    values = decode_e2m1(torch.tensor(codes, dtype=torch.uint8)).double() * scale * 2.0 ** -126
    return bf16_bits(values)


def group_word(codes: list[int]) -> int:
    """8 group codes -> the stored 32-bit group (SOURCE_BIT)."""
    return sum(((c >> b) & 1) << e2m1_spread.SOURCE_BIT[i][b] for i, c in enumerate(codes) for b in range(4))


def test_every_code_pair_in_every_position():
    scales = _scales()
    for a, b in itertools.product(range(16), repeat=2):
        for pos in range(7):  # codes a, b at group codes pos, pos + 1; the others hold other codes
            codes = [(a + 5 * i + b) & 0xF for i in range(8)]
            codes[pos], codes[pos + 1] = a, b
            s_lo, s_hi = scales[(a + pos) % len(scales)], scales[(b * 3 + pos) % len(scales)]
            out = ptx_emulator.run(e2m1_spread.PROGRAM, {"$4": group_word(codes), "$5": s_lo | s_lo << 16,
                                                         "$6": s_lo | s_lo << 16, "$7": s_hi | s_hi << 16,
                                                         "$8": s_hi | s_hi << 16})
            want = expected(codes[:4], s_lo) + expected(codes[4:], s_hi)  # low-half inputs, then high-half
            for i, (c_lo, c_hi) in enumerate(e2m1_spread.OUT_CODES):
                assert (out[i] & 0xFFFF, out[i] >> 16) == (want[c_lo], want[c_hi]), (codes, i)


@pytest.mark.parametrize("k", [64, 128, 192, 2880])
def test_where_spread_puts_each_input(k):
    """Input t's code is in chunk t // 128 (the last chunk 64 long when k % 128 == 64), half h, byte j of
    that half-chunk pair, group code h * 4 + j % 4 of group j // 4, bits SOURCE_BIT: written out per input."""
    g = torch.Generator().manual_seed(k)
    plain = torch.randint(0, 256, (k // 2,), dtype=torch.uint8, generator=g)
    stored = e2m1_spread.spread(plain, 0)
    words = stored.view(torch.int32).tolist()
    for t in range(k):
        code = (int(plain[t // 2]) >> (4 * (t % 2))) & 0xF
        base = t // 128 * 128
        size = 128 if base + 128 <= k else 64
        half, j = divmod(t - base, size // 2)
        word = words[base // 8 + j // 4]                       # the chunk's bytes start at base / 2
        got = sum(((word >> e2m1_spread.SOURCE_BIT[half * 4 + j % 4][b]) & 1) << b for b in range(4))
        assert got == code, (t, base, size, half, j)


def test_spread_round_trips_along_any_dim():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (3, 96, 5), dtype=torch.uint8, generator=g)   # inputs along dim 1: 192
    y = e2m1_spread.spread(x, 1)
    assert y.shape == x.shape and y.stride(1) == 1 and not torch.equal(x, y)
    assert torch.equal(e2m1_spread.unspread(y, 1), x)


def test_conversion_in_row_blocks_is_the_same(monkeypatch):
    """Large layers are converted a block of rows at a time (bounded temporaries): blocks of any size agree."""
    x = torch.randint(0, 256, (3, 96, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    whole = e2m1_spread.spread(x, 1)
    monkeypatch.setattr(e2m1_spread, "_BLOCK_BYTES", 200)   # two rows of 96 bytes a block
    assert torch.equal(e2m1_spread.spread(x, 1), whole)
    assert torch.equal(e2m1_spread.unspread(whole, 1), x)


def test_inputs_must_be_a_multiple_of_64():
    with pytest.raises(ValueError, match="multiple of 64 inputs"):
        e2m1_spread.spread(torch.zeros(2, 48, dtype=torch.uint8), 1)   # 96 inputs


def test_no_four_rotations_tile_the_word():
    """The module's claim that one rotation and one mask per word cannot serve all four words."""
    pattern = [p for p in range(32) if e2m1_spread.MASK >> p & 1]
    sets = [frozenset((p - r) % 32 for p in pattern) for r in range(32)]
    assert not any(len(frozenset().union(*c)) == 32 for c in itertools.combinations(sets, 4))


def test_emitted_ptx_is_the_program():
    body = [line for line in e2m1_spread.ptx().splitlines() if not line.startswith((".reg", "{", "}"))]
    assert len(body) == len(e2m1_spread.PROGRAM) == 13
    assert sum(line.startswith("mul.rn.bf16x2") for line in body) == 4   # one multiply a pair of weights


@pytest.mark.parametrize("k", [64, 192, 2880])
def test_block_scales_are_stored_in_low_high_pairs(k):
    """Stored block 2b of a chunk is the scale of its low half's inputs 16b.., block 2b + 1 of its high
    half's (the chunk's first block + S/32 + b): written out per block, then undone by unspread_scales."""
    scale = torch.arange(k // 16, dtype=torch.uint8).view(torch.float8_e4m3fn)[None, :, None].expand(2, -1, 3)
    stored = e2m1_spread.spread_scales(scale, 1)
    for i, v in enumerate(stored[0, :, 0].view(torch.uint8).tolist()):
        base = i // 8 * 8                                      # first block of the chunk
        per_half = 4 if base + 8 <= k // 16 else 2
        assert v == base + (i - base) // 2 + per_half * ((i - base) % 2), (i, v)
    assert torch.equal(e2m1_spread.unspread_scales(stored, 1).view(torch.uint8), scale.view(torch.uint8))


@pytest.mark.parametrize("k", [64, 192, 2880])
def test_storage_is_chunk_major_across_rows(k):
    """store_codes / store_scales: the spread bytes of chunk c of output row n start at c * N * 64 + n * 64
    (codes; the 64-input tail: rows of 32 bytes) and c * N * 8 + n * 8 (scales; tail rows of 4), so the rows
    a GEMM program reads in one K step are one block. Written out per row and chunk, then undone by load_*."""
    n_out, g = 5, torch.Generator().manual_seed(k)
    codes = torch.randint(0, 256, (2, n_out, k // 2), dtype=torch.uint8, generator=g)      # [E, out, in/2]
    scales = torch.randint(0, 120, (2, n_out, k // 16), dtype=torch.uint8, generator=g).view(torch.float8_e4m3fn)
    for stored, rows, per_chunk, load in (
            (e2m1_spread.store_codes(codes), e2m1_spread.spread(codes, -1), 64, e2m1_spread.load_codes),
            (e2m1_spread.store_scales(scales), e2m1_spread.spread_scales(scales, -1), 8, e2m1_spread.load_scales)):
        assert stored.shape == (2, rows.shape[-1], n_out) and stored.is_contiguous() and stored.dtype == rows.dtype
        flat, rows_b = stored.view(torch.uint8).flatten(1), rows.view(torch.uint8)
        for c in range(-(-rows.shape[-1] // per_chunk)):
            width = min(per_chunk, rows.shape[-1] - c * per_chunk)
            for n in range(n_out):
                at = c * n_out * per_chunk + n * width
                assert torch.equal(flat[:, at:at + width], rows_b[:, n, c * per_chunk:c * per_chunk + width]), (c, n)
        assert torch.equal(load(stored).view(torch.uint8), (codes if per_chunk == 64 else scales).view(torch.uint8))
