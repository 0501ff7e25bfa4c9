"""The frag storage (`plugins.moe.e2m1_frag`, `WeightFormat.NVFP4_FRAG`) and the decode of the Gluon GEMM
(`plugins.moe.gluon_frag`) on CPU: storage round trips and refusals, and the two inline-asm programs
(`DECODE_PTX`, `SCALE_PTX`) run by a small PTX interpreter written here, on stored tiles read the way the
kernel reads them (its pointer arithmetic, `tile_bits`, scales per row pair), against e2m1 * e4m3 computed
from the checkpoint-order codes and scales. No kernel is launched."""

from __future__ import annotations

import pytest
import torch

from plugins.moe import e2m1_frag

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
U32 = 0xFFFFFFFF


def _gluon_frag():
    pytest.importorskip("triton.experimental.gluon")
    from plugins.moe import gluon_frag
    return gluon_frag


def _e4m3(b: torch.Tensor) -> torch.Tensor:
    """E4M3 scale bytes (uint8) -> their float32 values."""
    return b.view(torch.float8_e4m3fn).float()


# ---- a PTX interpreter for the instructions of DECODE_PTX and SCALE_PTX, on int64 tensors ----------------
def _bf16(x: torch.Tensor) -> torch.Tensor:
    """16-bit patterns (int64) -> bf16 values."""
    return x.to(torch.int32).to(torch.int16).view(torch.bfloat16)


def _bits16(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16).to(torch.int64) & 0xFFFF


def _prmt(a, b, sel: int):
    """prmt.b32 (default mode): result byte i is byte (sel nibble i & 7) of {b, a}, a's bytes 0-3; nibble bit 3
    replicates that byte's sign bit."""
    out = torch.zeros_like(a)
    for i in range(4):
        nib = (sel >> 4 * i) & 0xF
        src = a if (nib & 7) < 4 else b
        byte = (src >> 8 * (nib & 3)) & 0xFF
        if nib & 8:
            byte = torch.where(byte & 0x80 != 0, 0xFF, 0)
        out |= byte << 8 * i
    return out


def _shf_l_wrap(a, b, n: int):
    """shf.l.wrap.b32: the upper 32 bits of {b, a} shifted left by n mod 32."""
    n &= 31
    return b if n == 0 else ((b << n) | (a >> (32 - n))) & U32


def _lop3(a, b, c, lut: int):
    """lop3.b32: result bit = bit (a << 2 | b << 1 | c) of lut, as a sum of minterms."""
    out = torch.zeros_like(a)
    for idx in range(8):
        if lut >> idx & 1:
            out |= (a if idx & 4 else ~a) & (b if idx & 2 else ~b) & (c if idx & 1 else ~c)
    return out & U32


def _cvt_e4m3x2(a):
    """cvt.rn.f16x2.e4m3x2: two E4M3 bytes (low byte -> low half) -> two float16 bit patterns."""
    half = [_bits16(((a >> s) & 0xFF).to(torch.uint8).view(torch.float8_e4m3fn).to(torch.float16)) for s in (0, 8)]
    return half[0] | half[1] << 16


def _mul_bf16x2(a, b):
    """mul.rn.bf16x2: lane-wise bf16 products, rounded to nearest even (bf16 subnormal inputs kept)."""
    lanes = [(_bf16((a >> s) & 0xFFFF).double() * _bf16((b >> s) & 0xFFFF).double()).to(torch.bfloat16)
             for s in (0, 16)]
    return _bits16(lanes[0]) | _bits16(lanes[1]) << 16


BINARY = {"and.b32": lambda a, b: a & b, "shr.b32": lambda a, n: a >> n, "mul.rn.bf16x2": _mul_bf16x2,
          "prmt.b32": _prmt, "shf.l.wrap.b32": _shf_l_wrap, "lop3.b32": _lop3,
          "cvt.rn.f16x2.e4m3x2": _cvt_e4m3x2}


def run_ptx(ptx: str, operands: dict[int, torch.Tensor], outputs: int) -> list[torch.Tensor]:
    """An inline-asm body on operands $i (int64 tensors of 32-bit values) -> its `outputs` results."""
    regs = {f"${i}": v for i, v in operands.items()}

    def value(x: str):
        return int(x, 0) if x[0].isdigit() else regs[x]

    body = ptx.strip()
    assert body[0] == "{" and body[-1] == "}"
    for stmt in body[1:-1].split(";"):
        stmt = stmt.strip()
        if not stmt or stmt.startswith(".reg"):
            continue
        op, rest = stmt.split(None, 1)
        if op == "mov.b32" and rest.startswith("{"):   # mov.b32 {lo, hi}, x: split into 16-bit halves
            lo, hi = (r.strip() for r in rest[1:rest.index("}")].split(","))
            x = value(rest.split(",")[-1].strip())
            regs[lo], regs[hi] = x & 0xFFFF, (x >> 16) & 0xFFFF
            continue
        dst, *srcs = (r.strip() for r in rest.split(","))
        if op == "mov.b32":
            regs[dst] = torch.full_like(next(iter(operands.values())), value(srcs[0]))
        else:
            regs[dst] = BINARY[op](*map(value, srcs))
    return [regs[f"${i}"] for i in range(outputs)]


def test_the_interpreter_on_known_values():
    """Checks of the interpreter itself, against values worked out by hand."""
    x = torch.tensor([0x80FF7F01])
    assert _prmt(x, x, 0x1010).item() == 0x7F017F01 and _prmt(x, x, 0x3232).item() == 0x80FF80FF
    assert _prmt(x, x, 0x000B).item() == 0x010101FF  # byte 0: the sign of byte 3 (0x80) replicated; 1-3: byte 0
    assert _shf_l_wrap(x, x, 4).item() == 0x0FF7F018
    assert _lop3(torch.tensor([0xF0]), torch.tensor([0xCC]), torch.tensor([0xAA]), 0xF8).item() == 0xF0 | 0x88
    assert _cvt_e4m3x2(torch.tensor([0x0138])).item() == 0x1800 << 16 | 0x3C00  # (1.0, 2**-9) as float16
    one, sub = torch.tensor([0x3F80]), torch.tensor([0x0040])  # bf16 1.0 and the subnormal 2**-127
    assert _mul_bf16x2(sub | one << 16, torch.tensor([0x40004000])).item() == 0x0080 | 0x4000 << 16


# ---- storage ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2880, 256, 192, 64])
@pytest.mark.parametrize("out", [64, 192])
def test_codes_and_scales_round_trip(out, k):
    """store_codes -> [E, in/2, out] contiguous, and load_codes gives back the input exactly (with and
    without the 64-input tail chunk); the same for the block scales [E, out, in/16]."""
    g = torch.Generator().manual_seed(out * 10000 + k)
    codes = torch.randint(0, 256, (2, out, k // 2), dtype=torch.uint8, generator=g)
    stored = e2m1_frag.store_codes(codes)
    assert stored.shape == (2, k // 2, out) and stored.is_contiguous()
    assert torch.equal(e2m1_frag.load_codes(stored), codes)
    scale = torch.randint(0, 0x7F, (2, out, k // 16), dtype=torch.uint8, generator=g).view(torch.float8_e4m3fn)
    s_stored = e2m1_frag.store_scales(scale)
    assert s_stored.shape == (2, k // 16, out) and s_stored.dtype == torch.float8_e4m3fn
    assert torch.equal(e2m1_frag.load_scales(s_stored).view(torch.uint8), scale.view(torch.uint8))


@pytest.mark.parametrize("shape", [(1, 96, 64), (1, 64, 48), (2, 32, 32)])
def test_shapes_frag_cannot_store_are_refused(shape):
    """out must be a multiple of 64 and in of 64; the message points at nvfp4_spread."""
    with pytest.raises(ValueError, match="nvfp4_spread"):
        e2m1_frag.store_codes(torch.zeros(shape, dtype=torch.uint8))


@pytest.mark.parametrize("byte", [0x81, 0xB8, 0xFE])
def test_negative_scales_are_refused(byte):
    scale = torch.tensor([[0x38, byte]], dtype=torch.uint8).view(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="negative.*nvfp4_spread"):
        e2m1_frag.check_scales(scale, "test")


def test_minus_zero_scale_becomes_plus_zero():
    scale = torch.tensor([0x80, 0x38, 0x00, 0x80], dtype=torch.uint8).view(torch.float8_e4m3fn)
    fixed = e2m1_frag.check_scales(scale, "test")
    assert fixed.dtype == torch.float8_e4m3fn and fixed.view(torch.uint8).tolist() == [0, 0x38, 0, 0]


# ---- the decode ---------------------------------------------------------------------------------------
def test_e2m1_times_e4m3_is_exact_and_normal_in_bf16():
    """What the decode relies on: every e2m1 * e4m3 (non-negative scale) is a bf16 value, and times 2**-111
    it is zero or a normal bf16 (no rounding in the MMA's operand)."""
    w = (E2M1[:, None] * _e4m3(torch.arange(0x7F, dtype=torch.uint8))[None, :]).flatten()
    assert torch.equal(w.to(torch.bfloat16).float(), w)
    small = (w.double() * 2.0 ** -111).to(torch.bfloat16).float().abs()
    assert bool(((small >= 2.0 ** -126) | (small == 0)).all())
    assert torch.equal(small.double() * 2.0 ** 111, w.abs().double())


def test_scale_ptx_gives_e4m3_times_2_pow_15():
    """SCALE_PTX on every non-negative E4M3 byte (4 a word, in every position): bf16 value * 2**15."""
    gf = _gluon_frag()
    b = torch.arange(0x7F, dtype=torch.uint8)
    words = torch.stack([b.roll(i) for i in range(4)], dim=-1)                       # [127, 4] bytes
    lo, hi = run_ptx(gf.SCALE_PTX.value, {2: words.view(torch.int32).to(torch.int64)[:, 0] & U32}, 2)
    got = torch.stack([_bf16(r >> s & 0xFFFF).float() for r in (lo, hi) for s in (0, 16)], dim=-1)
    assert torch.equal(got, _e4m3(words) * 2.0 ** 15)


def _positions(h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, byte position) of each address of a 64 x h tile, from `tile_bits` (bit i adds v to n or j)."""
    a = torch.arange(64 * h)
    n, j = torch.zeros_like(a), torch.zeros_like(a)
    for i, (axis, v) in enumerate(e2m1_frag.tile_bits(h)):
        (n if axis == "n" else j).add_((a >> i & 1) * v)
    assert sorted((n * h + j).tolist()) == list(range(64 * h))     # every (row, byte) once
    return n, j


def _decode_tile(gf, codes, scales, got: torch.Tensor, k0: int, h: int, t: int) -> None:
    """Tile t (rows 64t..) of the chunk at input k0 of one expert's stored bytes (at the kernel's offsets),
    decoded as the kernel does into got [out, in] (float32 of the bf16 weights times 2**-111)."""
    n_out = got.shape[0]
    s = scales[(k0 // 16) * n_out + t * 64 * (h // 8):][:64 * (h // 8)].view(64, h // 8)  # [row, 2 b + half]
    words = s.contiguous().view(torch.int32).to(torch.int64) & U32                           # [64, h/32]
    out = run_ptx(gf.SCALE_PTX.value, {2: words}, 2)                                         # bytes 0,1 / 2,3
    pair = torch.stack(out, dim=-1).view(64, h // 16)                     # [row, block]: bf16x2 (low, high)
    tile = codes[(k0 // 2) * n_out + t * 64 * h:][:64 * h]
    group = tile.view(torch.int32).to(torch.int64) & U32                  # group g = bytes 4g..4g+3
    n, j = (p.view(-1, 4) for p in _positions(h))                         # [group, element]
    assert torch.equal(n[:, 1], n[:, 0]) and torch.equal(n[:, 3], n[:, 2]) and torch.equal(n[:, 2], n[:, 0] + 8)
    assert torch.equal(j // 16, j[:, :1].expand(-1, 4) // 16)             # one block per group
    w = run_ptx(gf.DECODE_PTX.value, {4: group, 5: pair[n[:, 0], j[:, 0] // 16],
                                      6: pair[n[:, 2], j[:, 2] // 16]}, 4)
    for e in range(4):
        for half, reg in ((0, w[e // 2]), (1, w[2 + e // 2])):            # $0, $1 low half; $2, $3 high
            got[64 * t + n[:, e], k0 + half * h + j[:, e]] = _bf16(reg >> 16 * (e % 2) & 0xFFFF).float()


@pytest.mark.parametrize("out,k", [(64, 128), (64, 64), (128, 192)])
def test_decode_of_stored_tiles_is_e2m1_times_e4m3(out, k):
    """Random codes and scales (subnormal E4M3 and zero included), stored by store_codes / store_scales, read
    tile by tile at the kernel's offsets and decoded by the two PTX programs: every weight times ACC_FACTOR
    is e2m1(code) * e4m3(scale) of the checkpoint-order input, exactly. Checks the storage order, tile_bits,
    the scale pairs and both programs together."""
    gf = _gluon_frag()
    g = torch.Generator().manual_seed(out + k)
    codes = torch.randint(0, 256, (1, out, k // 2), dtype=torch.uint8, generator=g)
    sb = torch.randint(0, 0x7F, (1, out, k // 16), dtype=torch.uint8, generator=g)
    sb.view(-1)[:16] = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 0, 0x7E, 0x08, 0x40, 0x38, 0, 1, 7])
    stored = e2m1_frag.store_codes(codes)[0].reshape(-1)
    s_stored = e2m1_frag.store_scales(sb.view(torch.float8_e4m3fn))[0].view(torch.uint8).reshape(-1)

    nib = torch.stack([codes[0] & 0xF, codes[0] >> 4], dim=-1).flatten(-2).long()   # input 2i: low nibble of i
    want = E2M1[nib] * _e4m3(sb[0]).repeat_interleave(16, dim=-1)                     # [out, k]
    got = torch.full((out, k), float("nan"))
    chunks = [(k0, 64) for k0 in range(0, k - 127, 128)] + ([(k - 64, 32)] if k % 128 else [])
    for k0, h in chunks:
        for t in range(out // 64):
            _decode_tile(gf, stored, s_stored, got, k0, h, t)
    assert torch.equal(got * gf.ACC_FACTOR.value, want)
