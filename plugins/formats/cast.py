"""The closed-form MXFP4 -> NVFP4 cast: same 4-bit codes, scales re-expressed, no requantization.

With ``k_j = s_j - 127`` per MXFP4 block and ``k_max`` their maximum over non-zero scale bytes:
``global_scale = 2**(k_max - 8)`` and both 16-element halves of block j get the E4M3 block scale
``2**(k_j - k_max + 8)``, exact while ``k_max - k_j <= 17``. Such blocks keep their bytes verbatim except
that negative-zero nibbles (0x8) become 0x0, and decode to the same values bit for bit.

Byte-identical to ModelOpt 0.47 ``quantize_mxfp4_to_nvfp4_lossless(blocks, scales, k_max, "cpu")``.
Blocks the closed form cannot carry are requantized, alone, from their decoded (bf16) values exactly as
ModelOpt does: blocks more than 17 below ``k_max`` (which includes scale byte 0, k = -127, unless
k_max <= -110), and blocks with scale bytes 253/254 (where some decoded values overflow bf16 to +-inf,
which ModelOpt then encodes as +-6).
Differences from ModelOpt (ValueError where it would emit garbage): a scale byte 0xFF (E8M0 NaN), and a
``k_max`` below the tensor's own (its top blocks would clip) or outside [-127, 127].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .mxfp4 import E8M0_BIAS, E8M0_NAN, MXFP4_BLOCK_BYTES, check_mxfp4, decode_mxfp4
from .nvfp4 import E2M1_MAX, E4M3_MAX, E4M3_MIN_SCALE, encode_nvfp4

E4M3_POW2_SPAN = 17  # E4M3 holds 2**j exactly for j in [-9, 8]: a span of 17 binades
_E4M3_TOP_EXP = 8
_MAX_VERBATIM_BYTE = 252  # from byte 253 up, 4 * 2**k or 6 * 2**k overflows bf16/float32
_E2M1_MAGNITUDE = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


@dataclass(frozen=True)
class CastStats:
    """Block accounting of MXFP4 -> NVFP4 casts, in 32-element MXFP4 blocks.

    ``exact_blocks``: blocks cast in closed form, every value bit-exact (``k >= k_max - 17`` and no
    overflow). ``fallback_blocks``: the rest, requantized from their decoded values with a data-derived
    scale (values may change). ``zero_scale_blocks``: blocks with scale byte 0, a subset of the fallback
    unless ``k_max <= -110``. ``modelopt_lossless_blocks``: ModelOpt's ``n_lossless`` for the same cast,
    which also counts scale-0 and overflowing blocks as lossless (kept so both counts can be compared).
    ``k_max`` is the shared exponent used (the max of both when added).
    """

    exact_blocks: int
    fallback_blocks: int
    zero_scale_blocks: int
    k_max: int
    modelopt_lossless_blocks: int = 0

    @property
    def total_blocks(self) -> int:
        return self.exact_blocks + self.fallback_blocks

    def __add__(self, other: CastStats) -> CastStats:
        if not isinstance(other, CastStats):
            return NotImplemented
        return CastStats(
            exact_blocks=self.exact_blocks + other.exact_blocks,
            fallback_blocks=self.fallback_blocks + other.fallback_blocks,
            zero_scale_blocks=self.zero_scale_blocks + other.zero_scale_blocks,
            k_max=max(self.k_max, other.k_max),
            modelopt_lossless_blocks=self.modelopt_lossless_blocks + other.modelopt_lossless_blocks,
        )


def mxfp4_kmax(scales: torch.Tensor) -> int:
    """max(byte - 127) over the non-zero E8M0 scale bytes; 0 when every byte is 0 (as ModelOpt)."""
    if scales.dtype != torch.uint8:
        raise ValueError(f"mxfp4_kmax: scales must be uint8, got {scales.dtype}")
    top = int(scales.max()) if scales.numel() else 0
    return top - E8M0_BIAS if top else 0


def clear_negative_zero(packed: torch.Tensor) -> torch.Tensor:
    """Rewrite nibbles 0x8 (-0) to 0x0 in uint8 bytes, keeping every other nibble."""
    # (b & 0x77) + 0x77 carries into bit 3 / bit 7 iff that nibble's magnitude is non-zero.
    mask = (packed & 0x77).add_(0x77).bitwise_and_(0x88).bitwise_or_(0x77)  # one temporary, in place
    return mask.bitwise_and_(packed)


def _check_k_max(k_max: int, own: int, scales: torch.Tensor) -> int:
    if isinstance(k_max, bool) or not isinstance(k_max, int):
        raise ValueError(f"cast_mxfp4_to_nvfp4: k_max must be an int, got {k_max!r}")
    if not -E8M0_BIAS <= k_max <= E8M0_BIAS:
        raise ValueError(f"cast_mxfp4_to_nvfp4: k_max={k_max} is outside the E8M0 range [-127, 127]")
    if bool((scales != 0).any()) and k_max < own:
        raise ValueError(
            f"cast_mxfp4_to_nvfp4: k_max={k_max} is below this tensor's own k_max={own}; blocks above "
            "k_max + 8 would clip. Pass the maximum over the fused group (mxfp4_kmax of each member)."
        )
    return k_max


def _closed_form_amax(k: torch.Tensor) -> torch.Tensor:
    """ModelOpt's in-range per-block amax 6 * 2**k, float32 (k int32 [..., G])."""
    return E2M1_MAX * torch.exp2(k.float())


def _fallback_amax(blocks: torch.Tensor, k: torch.Tensor, k_internal: int) -> torch.Tensor:
    """ModelOpt's per-block amax for selected blocks [n, 16] with exponents k [n].

    ``mxfp4_to_nvfp4_per_block_amax`` keeps 6 * 2**k for blocks within 17 of the tensor's OWN k_max
    (``k_internal``, -127 when all bytes are 0) and uses the data-derived max|value| for the others.
    (With k_max >= k_internal both give a block scale below 2**-9 for such blocks, which then clamps;
    reproduced anyway so the emulation reads like ModelOpt.)
    """
    max_index = torch.maximum(blocks & 0x07, (blocks >> 4) & 0x07).amax(dim=-1).long()  # [n]
    data_derived = _E2M1_MAGNITUDE.to(blocks.device)[max_index] * torch.exp2(k.float())
    return torch.where(k >= k_internal - E4M3_POW2_SPAN, _closed_form_amax(k), data_derived)


def _block_scale(amax: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """ModelOpt's lossless-path block scale: amax / (6 * global) clamped to [2**-9, 448], as E4M3."""
    scale = (amax / (E2M1_MAX * global_scale)).clamp(min=E4M3_MIN_SCALE, max=E4M3_MAX)
    return scale.to(torch.float8_e4m3fn)


def _requantize(blocks, scales, block_scale, global_scale) -> torch.Tensor:
    """NVFP4 bytes of blocks [n, 16] from their bf16-decoded values and ModelOpt's scales [n, 2]."""
    values = decode_mxfp4(blocks.unsqueeze(1), scales.unsqueeze(1), dtype=torch.bfloat16)  # [n, 32]
    divisor = block_scale.to(torch.float32) * global_scale  # [n, 2]
    return encode_nvfp4(values, divisor)  # [n, 16]


def _count(scales: torch.Tensor, k: torch.Tensor, k_max: int, verbatim: torch.Tensor) -> CastStats:
    zero = scales == 0
    exact = int(verbatim.sum())
    modelopt = int(((k >= k_max - E4M3_POW2_SPAN) | zero).sum())
    return CastStats(exact, scales.numel() - exact, int(zero.sum()), k_max, modelopt)


def cast_mxfp4_to_nvfp4(
    blocks: torch.Tensor, scales: torch.Tensor, k_max: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, CastStats]:
    """MXFP4 blocks [..., out, G, 16] + scales [..., out, G] -> NVFP4 in the same [..., out, in] orientation.

    Returns (packed uint8 [..., out, G*16], block_scale float8_e4m3fn [..., out, 2G],
    global_scale float32 0-d = 2**(k_max - 8), CastStats). ``k_max`` defaults to ``mxfp4_kmax(scales)``;
    pass the maximum over a fused group (e.g. gate_up of all experts) to share one global scale.
    """
    check_mxfp4(blocks, scales, "cast_mxfp4_to_nvfp4")
    if bool((scales == E8M0_NAN).any()):
        first = tuple(int(i) for i in torch.nonzero(scales == E8M0_NAN)[0])
        raise ValueError(f"cast_mxfp4_to_nvfp4: scale byte 0xFF (E8M0 NaN) at block {first}")
    own = mxfp4_kmax(scales)
    k_max = own if k_max is None else _check_k_max(k_max, own, scales)
    k = scales.to(torch.int32) - E8M0_BIAS  # [..., out, G]
    global_scale = torch.tensor(2.0 ** (k_max - _E4M3_TOP_EXP), dtype=torch.float32, device=blocks.device)

    flat_blocks = blocks.reshape(-1, MXFP4_BLOCK_BYTES)  # [B, 16]
    flat_scales, flat_k = scales.reshape(-1), k.reshape(-1)  # [B]
    verbatim = (flat_k >= k_max - E4M3_POW2_SPAN) & (flat_scales <= _MAX_VERBATIM_BYTE)  # [B]
    redo = torch.nonzero(~verbatim).squeeze(1)  # [n] indices of requantized blocks

    amax = _closed_form_amax(flat_k)  # [B]
    k_internal = own if bool((flat_scales != 0).any()) else -E8M0_BIAS
    amax[redo] = _fallback_amax(flat_blocks[redo], flat_k[redo], k_internal)
    block_scale = _block_scale(amax, global_scale).repeat_interleave(2)  # [2B]: two NVFP4 halves per block

    packed = clear_negative_zero(flat_blocks)  # [B, 16]
    if redo.numel():
        redo_scale = block_scale.view(-1, 2)[redo]  # [n, 2]
        packed[redo] = _requantize(flat_blocks[redo], flat_scales[redo], redo_scale, global_scale)

    lead = blocks.shape[:-2]  # [..., out]
    n_groups = blocks.shape[-2]
    return (
        packed.reshape(*lead, n_groups * MXFP4_BLOCK_BYTES),
        block_scale.reshape(*lead, 2 * n_groups),
        global_scale,
        _count(scales, k, k_max, verbatim),
    )
