"""`WeightFormat.NVFP4_FRAG`: NVFP4 codes stored in the order of the Hopper tensor-core operand registers, so the
Gluon GEMM (`plugins.moe.gluon_frag`) loads each thread's bytes with 16-byte loads and decodes them in the
registers the warpgroup MMA reads (no shared-memory round trip for the decoded tile).

Chunks and halves are those of `plugins.moe.e2m1_spread`: a chunk of S = 128 inputs (the last one 64 when
K % 128 == 64) is H = S/2 bytes a row, byte j holding inputs j (the low half) and H + j (the high half), so
one decode gives two operand tiles. The scales are stored exactly as spread stores them
(`e2m1_spread.store_scales`: chunk-major, (low, high) block pairs). The codes are chunk-major too, and
within a chunk the output rows are cut into tiles of `ROWS` = 64; a tile's 64 x H bytes are one block whose
byte address bits mean `tile_bits(H)`: the first 4 bits (and, for H = 64, bit 9) are a thread's registers,
bits 4..8 its lane, the last two its warp, exactly as the 64 x H bf16 operand A of `wgmma` (4 warps,
`DotOperandLayout(0, NVMMADistributedLayout([3, 0], ...), k_width=2)`) spreads its elements. Each 4 bytes
(address bits 0-1: input j, j+1 of row n, then of row n+8) form one group of 8 codes, low-half codes 0-3
and high-half codes 4-7, with its 32 bits permuted as `e2m1_spread.SOURCE_BIT` says, so the spread decode
program applies unchanged (`DECODE_PTX`, with a scale per row pair)."""

from __future__ import annotations

import functools

import torch

from plugins.moe import e2m1_spread

ROWS = 64                 # output rows of a tile (one warpgroup's MMA M)
CHUNK = e2m1_spread.CHUNK
TAIL = e2m1_spread.TAIL


GLUON_TRITON = (3, 6)  # the oldest Triton the Gluon kernel was run with (3.6 on the H100; 3.9 compiles it too)


@functools.cache  # asked on every launch of the frag GEMM
def frag_available(device: torch.device) -> bool:
    """Whether the Gluon GEMM on this storage runs on `device`: Hopper (sm_90) and a Triton with Gluon at least
    GLUON_TRITON (Gluon is experimental and changes between releases; `plugins.moe.gluon_frag` imports triton
    only when asked, so this is CPU-safe)."""
    if device.type != "cuda":
        return False
    try:
        import triton

        from plugins.moe import gluon_frag
    except ImportError:
        return False
    release = tuple(int(x) for x in triton.__version__.split(".")[:2] if x.isdigit())
    return release >= GLUON_TRITON and gluon_frag.available(device)


def tile_bits(h: int) -> tuple[tuple[str, int], ...]:
    """What each address bit of a tile of 64 rows x h bytes (h = 64, or 32 for the tail chunk) selects, bit 0
    first: ("j", v) adds v to the byte's input position, ("n", v) to its row."""
    if h not in (CHUNK // 2, TAIL // 2):
        raise ValueError(f"e2m1_frag: a tile is 64 or 32 bytes a row, got {h}")
    regs = (("j", 1), ("n", 8), ("j", 8), ("j", 16))
    lanes = (("j", 2), ("j", 4), ("n", 1), ("n", 2), ("n", 4))
    return regs + lanes + ((("j", 32),) if h == 64 else ()) + (("n", 16), ("n", 32))


def thread_bits(h: int) -> tuple[list[int], list[int], list[int]]:
    """Which address bits of a tile (`tile_bits(h)`) index a thread's registers, its lane and its warp."""
    n = len(tile_bits(h))
    return [0, 1, 2, 3] + ([9] if h == 64 else []), list(range(4, 9)), [n - 2, n - 1]


def _tile_index(h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, input position) of every byte address of a tile, [64 * h] each."""
    a = torch.arange(ROWS * h)
    n = torch.zeros_like(a)
    j = torch.zeros_like(a)
    for bit, (axis, v) in enumerate(tile_bits(h)):
        on = (a >> bit) & 1
        if axis == "n":
            n += on * v
        else:
            j += on * v
    return n, j


def _check(codes: torch.Tensor) -> None:
    if codes.dtype != torch.uint8 or codes.dim() not in (2, 3) or (2 * codes.shape[-1]) % TAIL or codes.shape[-2] % ROWS:
        raise ValueError(f"e2m1_frag: needs uint8 codes [E, out, in/2] or [out, in/2] with out a multiple of {ROWS} and in of "
                         f"{TAIL}, got {codes.dtype} {tuple(codes.shape)}; keep such a layer in nvfp4_spread "
                         "(TRTKIT_MOE_STORAGE=spread)")


def _pack_groups(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Codes [..., G, 4] of the low and high halves -> the stored groups, bytes [..., G * 4]."""
    codes = torch.cat([lo, hi], dim=-1).to(torch.int32)                    # [..., G, 8]
    word = torch.zeros(codes.shape[:-1], dtype=torch.int32, device=codes.device)
    for c, row in enumerate(e2m1_spread.SOURCE_BIT):
        for b, at in enumerate(row):
            word |= ((codes[..., c] >> b) & 1) << at                         # bit 31: int32 wraps
    return word.view(torch.uint8).flatten(-2)


def _unpack_groups(stored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `_pack_groups`: bytes [..., G * 4] -> (low, high) codes [..., G, 4]."""
    word = stored.contiguous().view(torch.int32)
    codes = torch.zeros(*word.shape, 8, dtype=torch.int32, device=stored.device)
    for c, row in enumerate(e2m1_spread.SOURCE_BIT):
        for b, at in enumerate(row):
            codes[..., c] |= ((word >> at) & 1) << b
    codes = codes.to(torch.uint8)
    return codes[..., :4], codes[..., 4:]


def _chunks(k: int) -> list[int]:
    return [CHUNK] * (k // CHUNK) + ([TAIL] if k % CHUNK else [])


def _expert_store(codes: torch.Tensor) -> torch.Tensor:
    """One expert's codes [out, in/2] (checkpoint order) -> its stored bytes [in/2 * out]."""
    out, half_k = codes.shape
    nibbles = torch.stack([codes & 0xF, codes >> 4], dim=-1).flatten(-2)   # [out, K]
    parts, start = [], 0
    for size in _chunks(2 * half_k):
        h = size // 2
        n, j = (i.to(codes.device) for i in _tile_index(h))
        c = nibbles[:, start:start + size].view(out // ROWS, ROWS, 2, h)    # [tile, row, half, j]
        lo = c[:, n, 0, j].view(out // ROWS, -1, 4)                          # [tile, group, 4]
        hi = c[:, n, 1, j].view(out // ROWS, -1, 4)
        parts.append(_pack_groups(lo, hi).flatten())
        start += size
    return torch.cat(parts)


def _expert_load(stored: torch.Tensor, out: int, half_k: int) -> torch.Tensor:
    """The inverse of `_expert_store`: bytes [in/2 * out] -> codes [out, in/2] in the checkpoint's order."""
    nibbles = torch.empty(out, 2 * half_k, dtype=torch.uint8, device=stored.device)
    pos, start = 0, 0
    for size in _chunks(2 * half_k):
        h = size // 2
        n, j = (i.to(stored.device) for i in _tile_index(h))
        lo, hi = _unpack_groups(stored[pos:pos + out * h].view(out // ROWS, -1))
        c = nibbles[:, start:start + size].view(out // ROWS, ROWS, 2, h)
        c[:, n, 0, j] = lo.flatten(-2)
        c[:, n, 1, j] = hi.flatten(-2)
        pos += out * h
        start += size
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def store_codes(codes: torch.Tensor) -> torch.Tensor:
    """Packed codes in the checkpoint's order [E, out, in/2] (or one expert's [out, in/2]) -> the storage
    [E, in/2, out] ([in/2, out]; contiguous, bytes as the module docstring says), one expert at a time
    (gpt-oss-120b's gate_up is 1 GiB a layer)."""
    _check(codes)
    if codes.dim() == 2:
        return store_codes(codes[None])[0]
    e, out, half_k = codes.shape
    stored = torch.empty(e, half_k, out, dtype=torch.uint8, device=codes.device)
    for i in range(e):
        stored[i].view(-1).copy_(_expert_store(codes[i]))
    return stored


def load_codes(stored: torch.Tensor) -> torch.Tensor:
    """The inverse of `store_codes`: [E, in/2, out] -> [E, out, in/2] in the checkpoint's order."""
    e, half_k, out = stored.shape
    return torch.stack([_expert_load(stored[i].reshape(-1), out, half_k) for i in range(e)])


def check_scales(scale: torch.Tensor, what: str) -> torch.Tensor:
    """The block-scale bytes as the Gluon decode needs them: no sign bit (it reads an E4M3 byte through
    float16 bits). -0 becomes +0 (the same value); a negative scale is refused."""
    b = scale.view(torch.uint8)
    if bool(((b & 0x80) != 0).logical_and(b != 0x80).any()):
        raise ValueError(f"{what}: negative E4M3 block scales, which nvfp4_frag cannot hold; keep this layer in "
                         "nvfp4_spread (TRTKIT_MOE_STORAGE=spread)")
    return torch.where(b == 0x80, torch.zeros_like(b), b).view(scale.dtype)


def store_scales(scale: torch.Tensor) -> torch.Tensor:
    """Block scales [E, out, in/16] (checkpoint order) -> [E, in/16, out] as spread stores them."""
    return e2m1_spread.store_scales(check_scales(scale, "nvfp4_frag block scales"))


def load_scales(stored: torch.Tensor) -> torch.Tensor:
    return e2m1_spread.load_scales(stored)
