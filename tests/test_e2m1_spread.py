"""The spread-order E2M1 decode (`plugins.moe.e2m1_spread`, `WeightFormat.NVFP4_SPREAD`) executed on CPU: its
PROGRAM table, the one `ptx()` emits, run with the PTX ISA's definitions (`tests/ptx_emulator.py`) on codes
that `spread()` stored, against the E2M1 values of `plugins.formats` times the bf16 scale rounded once, bit
for bit, for every byte value in every position. The PTX itself is assembled by ptxas in
tests/test_moe_pipelining.py's compiles."""

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


def test_every_byte_in_every_position():
    scales = _scales()
    for byte in range(256):
        for pos in range(4):
            plain = [(byte + 37 * (i - pos)) & 0xFF if i != pos else byte for i in range(4)]
            stored = e2m1_spread.spread(torch.tensor(plain, dtype=torch.uint8), 0)
            word = int.from_bytes(bytes(stored.tolist()), "little")
            s = scales[(byte + pos) % len(scales)]
            out = ptx_emulator.run(e2m1_spread.PROGRAM, {"$4": word, "$5": s | s << 16, "$6": s | s << 16})
            codes = [n for b in plain for n in (b & 0xF, b >> 4)]        # code 2j: low nibble of byte j
            want = expected(codes, s)
            for i, (c_lo, c_hi) in enumerate(e2m1_spread.OUT_CODES):
                assert (out[i] & 0xFFFF, out[i] >> 16) == (want[c_lo], want[c_hi]), (plain, i)


def test_spread_is_a_bit_permutation_and_unspread_inverts_it():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (3, 24, 5), dtype=torch.uint8, generator=g)   # groups along dim 1
    y = e2m1_spread.spread(x, 1)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert torch.equal(e2m1_spread.unspread(y, 1), x)
    for bit in range(32):  # one set bit moves to exactly one place, SOURCE_BIT's
        one = torch.tensor(list((1 << bit).to_bytes(4, "little")), dtype=torch.uint8)
        moved = int.from_bytes(bytes(e2m1_spread.spread(one, 0).tolist()), "little")
        code, b = divmod(bit, 4)
        assert moved == 1 << e2m1_spread.SOURCE_BIT[code][b]


def test_groups_must_be_whole():
    with pytest.raises(ValueError, match="multiple of 4 bytes along dim 1"):
        e2m1_spread.spread(torch.zeros(2, 6, dtype=torch.uint8), 1)


def test_no_four_rotations_tile_the_word():
    """The module's claim that one rotation and one mask per word cannot serve all four words."""
    pattern = [p for p in range(32) if e2m1_spread.MASK >> p & 1]
    sets = [frozenset((p - r) % 32 for p in pattern) for r in range(32)]
    assert not any(len(frozenset().union(*c)) == 32 for c in itertools.combinations(sets, 4))


def test_emitted_ptx_is_the_program():
    body = [line for line in e2m1_spread.ptx().splitlines() if not line.startswith((".reg", "{", "}"))]
    assert len(body) == len(e2m1_spread.PROGRAM) == 13
    assert sum(line.startswith("mul.rn.bf16x2") for line in body) == 4   # one multiply a pair of weights
