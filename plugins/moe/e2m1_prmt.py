"""E2M1 -> bfloat16 by byte lookup (PTX `prmt`), for the MoE kernel's decode on CUDA (`MoeConfig.lut_decode`).

One inline-asm call takes 4 packed bytes (8 E2M1 codes) and 4 bf16 block scales and gives the 4 low-nibble
and the 4 high-nibble weights as bf16 (the operand order of `triton_kernels._e2m1_bf16_asm`). Each
magnitude (3 bits) selects the high and the low byte of its exact bf16 value from two 8-byte tables in
one `prmt` each (4 codes a `prmt`), the sign bit is spread to a byte mask by `prmt`'s sign-replicate
mode and OR-ed into the high bytes, one `prmt` pairs the bytes into bf16 halves, one `mul.rn.bf16x2`
applies the scale: 19 instructions for 8 weights, against 30 for shifting each nibble into place and
fixing its exponent with a multiply. The product is the exact E2M1 value times the bf16 block scale,
rounded once: bit-identical to the `bf16_scale` decode for block scales of at least 2**-126 (below, the
bf16 scale itself is subnormal; no real checkpoint has such blocks).

The program is data (`PROGRAM`): `ptx()` writes it as PTX and the CPU tests execute the same table with
the PTX ISA's definitions of the five instructions, so what is tested is what is emitted.
"""

from __future__ import annotations

# bf16 bits of the E2M1 magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 (codes 0..7): high and low bytes
HIGH_BYTES = (0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40)
LOW_BYTES = (0x00, 0x00, 0x80, 0xC0, 0x00, 0x40, 0x80, 0xC0)


def _word(table: tuple[int, ...], first: int) -> int:
    """Bytes first..first+3 of a table as one little-endian 32-bit word (prmt's byte numbering)."""
    return sum(b << (8 * i) for i, b in enumerate(table[first:first + 4]))


CONSTANTS = {"hi_lo": _word(HIGH_BYTES, 0), "hi_hi": _word(HIGH_BYTES, 4),
             "lo_lo": _word(LOW_BYTES, 0), "lo_hi": _word(LOW_BYTES, 4)}

# Operands: $0..$3 out (lo nibbles of bytes 0-1, 2-3; hi nibbles of bytes 0-1, 2-3), $4 the 4 bytes, $5 / $6
# the bf16 scales of bytes 0-1 / 2-3. Names are .b32 registers; ints are immediates.
# prmt selectors, one nibble per output byte (low first): bits 0-2 pick byte 0-7 of {b, a}, bit 3 sign-fills.
PROGRAM: tuple[tuple, ...] = (
    ("and", "m", "$4", 0x77777777),            # magnitudes: each code's sign cleared (a selector, no sign fill)
    ("shl", "s", "$4", 4),                     # byte j's msb = sign of its low code ($4's = of its high code)
    ("shr", "m2", "m", 16),                    # codes of bytes 2-3 into the selector half
    ("prmt", "h", "hi_lo", "hi_hi", "m"),      # high bytes of codes lo0 hi0 lo1 hi1
    ("prmt", "l", "lo_lo", "lo_hi", "m"),      # low bytes, same codes
    ("prmt", "g", "s", "$4", 0xD9C8),          # 0xFF / 0x00 per code by its sign, same order
    ("lop3", "h", "h", "g", 0x80808080, 0xF8),  # h | (g & 0x80808080)
    ("prmt", "p", "l", "h", 0x6240),           # (lo0, lo1) as bf16x2
    ("mul", "$0", "p", "$5"),
    ("prmt", "p", "l", "h", 0x7351),           # (hi0, hi1)
    ("mul", "$2", "p", "$5"),
    ("prmt", "h", "hi_lo", "hi_hi", "m2"),     # bytes 2-3 alike
    ("prmt", "l", "lo_lo", "lo_hi", "m2"),
    ("prmt", "g", "s", "$4", 0xFBEA),
    ("lop3", "h", "h", "g", 0x80808080, 0xF8),
    ("prmt", "p", "l", "h", 0x6240),
    ("mul", "$1", "p", "$6"),
    ("prmt", "p", "l", "h", 0x7351),
    ("mul", "$3", "p", "$6"),
)

_PTX_OP = {"and": "and.b32", "shl": "shl.b32", "shr": "shr.u32", "prmt": "prmt.b32", "lop3": "lop3.b32",
           "mul": "mul.rn.bf16x2"}


# The tables arrive as operands (uniform splats the compiler keeps in registers across calls; a `mov` inside
# the asm block would be repeated at every call): each is one pack-4 int32 argument after code and scale,
# so its first register is $7, $11, $15, $19.
CONSTANT_OPERANDS = {name: f"${7 + 4 * i}" for i, name in enumerate(CONSTANTS)}
CONSTRAINTS = "=r,=r,=r,=r,r,r,r" + ",r" * 4 * len(CONSTANTS)


def ptx() -> str:
    """`PROGRAM` as the body of one inline-asm block (operands as `CONSTRAINTS` lists them)."""
    regs = sorted({a for step in PROGRAM for a in step[1:] if isinstance(a, str) and not a.startswith("$")}
                  - set(CONSTANTS))
    lines = ["{", f".reg .b32 {', '.join(regs)};"]
    for op, *args in PROGRAM:
        args = [CONSTANT_OPERANDS.get(a, a) if isinstance(a, str) else f"{a:#x}" for a in args]
        lines.append(f"{_PTX_OP[op]} {', '.join(args)};")
    lines.append("}")
    return "\n".join(lines)
