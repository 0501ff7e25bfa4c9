"""The byte-lookup E2M1 decode (`plugins.moe.e2m1_prmt`, `MoeConfig.lut_decode`) executed on CPU: its PROGRAM
table, the one `ptx()` emits, run with the PTX ISA's definitions (`tests/ptx_emulator.py`),
against the E2M1 values of `plugins.formats` times a bf16 block scale rounded once, bit for bit, for
every byte value in every position and scales of both signs' magnitudes from tiny to large. The PTX
itself is assembled by ptxas in tests/test_moe_pipelining.py's compiles (configs with lut_decode)."""

from __future__ import annotations

import ptx_emulator
import torch
from ptx_emulator import bf16_bits

from plugins.formats.e2m1 import decode_e2m1
from plugins.moe import e2m1_prmt


def run(code_word: int, scale01: int, scale23: int) -> list[int]:
    """PROGRAM on one 4-byte word and two bf16x2 scale words -> [$0, $1, $2, $3]."""
    return ptx_emulator.run(e2m1_prmt.PROGRAM, {"$4": code_word, "$5": scale01, "$6": scale23,
                                                **e2m1_prmt.CONSTANTS})


def expected(byte: int, scale: torch.Tensor) -> tuple[int, int]:
    """(low-nibble, high-nibble) weight of one byte times the bf16 scale, rounded once."""
    values = decode_e2m1(torch.tensor([byte & 0xF, byte >> 4], dtype=torch.uint8))
    return tuple(bf16_bits(values.float() * scale.float()))


def test_every_byte_in_every_position():
    g = torch.Generator().manual_seed(0)
    scales = torch.cat([torch.tensor([1.0, 0.0019, 448.0 * 0.02, 3.0e-5]),
                        torch.rand(12, generator=g) * 10]).to(torch.bfloat16)
    for byte in range(256):
        for shift in range(4):  # the byte in position `shift`; the other positions hold other codes
            word_bytes = [(byte + 37 * (i - shift)) & 0xFF if i != shift else byte for i in range(4)]
            word = sum(b << (8 * i) for i, b in enumerate(word_bytes))
            s = scales[(byte + shift) % len(scales): (byte + shift) % len(scales) + 1].repeat(4)
            s[2:] = scales[(byte * 7 + shift) % len(scales)]
            sb = bf16_bits(s)
            lo01, lo23, hi01, hi23 = run(word, sb[0] | (sb[1] << 16), sb[2] | (sb[3] << 16))
            lo = [lo01 & 0xFFFF, lo01 >> 16, lo23 & 0xFFFF, lo23 >> 16]
            hi = [hi01 & 0xFFFF, hi01 >> 16, hi23 & 0xFFFF, hi23 >> 16]
            for i, b in enumerate(word_bytes):
                assert (lo[i], hi[i]) == expected(b, s[i]), (hex(word), i, hex(b))


def test_tables_are_the_e2m1_magnitudes():
    for m in range(8):
        bits = (e2m1_prmt.HIGH_BYTES[m] << 8) | e2m1_prmt.LOW_BYTES[m]
        value = torch.tensor([bits], dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
        assert value.item() == decode_e2m1(torch.tensor([m], dtype=torch.uint8)).item()


def test_emitted_ptx_is_the_program():
    text = e2m1_prmt.ptx()
    body = [line for line in text.splitlines() if not line.startswith((".reg", "{", "}"))]
    assert len(body) == len(e2m1_prmt.PROGRAM) == 19
    for name, operand in e2m1_prmt.CONSTANT_OPERANDS.items():
        assert operand in text and name not in text
