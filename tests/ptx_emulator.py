"""The PTX instructions our inline-asm decodes use, executed on CPU with the PTX ISA's definitions, and a
runner for the program tables those decodes are emitted from (`plugins.moe.e2m1_spread`):
what the tests execute is what `ptx()` emits."""

from __future__ import annotations

import torch

MASK = 0xFFFFFFFF


def lop3(a: int, b: int, c: int, lut: int) -> int:
    """lop3.b32: each result bit is bit (a<<2 | b<<1 | c) of lut."""
    out = 0
    for bit in range(32):
        idx = (((a >> bit) & 1) << 2) | (((b >> bit) & 1) << 1) | ((c >> bit) & 1)
        out |= ((lut >> idx) & 1) << bit
    return out


def shf_l_wrap(a: int, b: int, n: int) -> int:
    """shf.l.wrap.b32 d, a, b, n: the upper 32 bits of {b, a} (b high) shifted left by n mod 32."""
    n &= 31
    return (((b << 32 | a) << n) >> 32) & MASK


def bf16x2_mul(a: int, b: int) -> int:
    """mul.rn.bf16x2: lane-wise bf16 products rounded to nearest even (subnormals kept)."""
    lanes = torch.tensor([a & 0xFFFF, a >> 16, b & 0xFFFF, b >> 16], dtype=torch.int32).to(torch.int16)
    x = lanes.view(torch.bfloat16)
    p = (x[:2].double() * x[2:].double()).to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    return int(p[0]) | (int(p[1]) << 16)


OPS = {"and": lambda a, b: a & b, "lop3": lop3, "mul": bf16x2_mul, "rotl": lambda a, n: shf_l_wrap(a, a, n)}


def run(program, registers: dict[str, int]) -> list[int]:
    """A program table on the given registers -> [$0, $1, $2, $3]."""
    regs = dict(registers)
    for op, dst, *srcs in program:
        regs[dst] = OPS[op](*(regs[s] if isinstance(s, str) else s for s in srcs))
    return [regs[f"${i}"] for i in range(4)]


def bf16_bits(x: torch.Tensor) -> list[int]:
    return (x.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF).tolist()
