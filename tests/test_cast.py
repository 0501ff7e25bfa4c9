"""MXFP4 -> NVFP4 closed-form cast: byte-identical to ModelOpt's quantize_mxfp4_to_nvfp4_lossless."""

import pytest
import torch

from plugins.formats.cast import CastStats, cast_mxfp4_to_nvfp4, clear_negative_zero, mxfp4_kmax
from plugins.formats.mxfp4 import decode_mxfp4, encode_mxfp4
from plugins.formats.nvfp4 import dequantize_nvfp4


def modelopt_cast(blocks, scales, k_max):
    from modelopt.torch.export.shard_cast_utils import quantize_mxfp4_to_nvfp4_lossless

    packed = blocks.reshape(*blocks.shape[:-2], -1)  # [..., out, G*16]
    return quantize_mxfp4_to_nvfp4_lossless(packed, scales, k_max, "cpu")


def assert_same_as_modelopt(blocks, scales, k_max=None):
    ours = cast_mxfp4_to_nvfp4(blocks, scales, k_max)
    packed, block_scale, global_scale, stats = ours
    used_k_max = mxfp4_kmax(scales) if k_max is None else k_max
    ref_packed, ref_scale, ref_global, n_blocks, n_lossless = modelopt_cast(blocks, scales, used_k_max)
    assert packed.shape == ref_packed.shape and torch.equal(packed, ref_packed)
    assert block_scale.dtype == torch.float8_e4m3fn and block_scale.shape == ref_scale.shape
    assert torch.equal(block_scale.view(torch.uint8), ref_scale.view(torch.uint8))
    assert global_scale.shape == () and torch.equal(global_scale, ref_global)
    assert (stats.total_blocks, stats.modelopt_lossless_blocks, stats.k_max) == (n_blocks, n_lossless, used_k_max)
    return ours


def random_mxfp4(shape, seed, scale_lo, scale_hi):
    """Random bytes (every code, incl. -0) under random scale bytes in [scale_lo, scale_hi)."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (*shape, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(scale_lo, scale_hi, shape, dtype=torch.uint8, generator=g)
    return blocks, scales


def same_values_ignoring_zero_sign(a, b):
    """Bitwise equality after -0.0 -> +0.0 (the cast writes -0 nibbles as +0, as ModelOpt does)."""
    return torch.equal((a + 0.0).view(torch.int32), (b + 0.0).view(torch.int32))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(6, 4), (3, 8, 5), (2, 2, 4, 3)])  # [out, G], [E, out, G], ...
def test_in_range_blocks_are_byte_identical_and_verbatim(seed, shape):
    blocks, scales = random_mxfp4(shape, seed, 110, 128)  # spread 17: every block in range
    packed, block_scale, global_scale, stats = assert_same_as_modelopt(blocks, scales)
    assert stats == CastStats(scales.numel(), 0, 0, mxfp4_kmax(scales), scales.numel())
    assert torch.equal(packed, clear_negative_zero(blocks).reshape(packed.shape))
    assert torch.equal(global_scale, torch.tensor(2.0 ** (stats.k_max - 8)))
    expected_scale = torch.exp2((scales.float() - 127) - stats.k_max + 8).repeat_interleave(2, dim=-1)
    assert torch.equal(block_scale.float(), expected_scale)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_range_values_equal_mxfp4_bit_for_bit(seed):
    blocks, scales = random_mxfp4((4, 16, 6), seed, 100, 118)
    packed, block_scale, global_scale, _ = cast_mxfp4_to_nvfp4(blocks, scales)
    ours = dequantize_nvfp4(packed, block_scale, global_scale, torch.float32)
    source = decode_mxfp4(blocks, scales, torch.float32)
    assert same_values_ignoring_zero_sign(ours, source)
    # and exactly bit for bit against the source with its -0 nibbles cleared
    assert torch.equal(
        ours.view(torch.int32),
        decode_mxfp4(clear_negative_zero(blocks), scales, torch.float32).view(torch.int32),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_out_of_range_blocks_fall_back_like_modelopt(seed):
    blocks, scales = random_mxfp4((3, 8, 4), seed, 1, 200)  # spread ~200: many blocks > 17 below k_max
    packed, _, _, stats = assert_same_as_modelopt(blocks, scales)
    k = scales.int() - 127
    far = k < stats.k_max - 17
    assert stats.fallback_blocks == int(far.sum()) > 0
    assert stats.exact_blocks == int((~far).sum())
    near = (~far).reshape(-1)
    verbatim = clear_negative_zero(blocks).reshape(-1, 16)[near]
    assert torch.equal(packed.reshape(-1, 16)[near], verbatim)  # only far blocks were requantized


def test_shared_k_max_over_a_fused_group():
    gate, gate_scales = random_mxfp4((2, 6, 3), 4, 100, 118)
    up, up_scales = random_mxfp4((2, 6, 3), 5, 100, 130)
    shared = max(mxfp4_kmax(gate_scales), mxfp4_kmax(up_scales))
    assert shared > mxfp4_kmax(gate_scales)
    a = assert_same_as_modelopt(gate, gate_scales, shared)
    b = assert_same_as_modelopt(up, up_scales, shared)
    assert torch.equal(a[2], b[2])
    total = a[3] + b[3]
    assert total.k_max == shared and total.total_blocks == 2 * 36
    # far below a shared k_max, blocks go out of range although they were in range for their own tensor
    c = assert_same_as_modelopt(gate, gate_scales, mxfp4_kmax(gate_scales) + 12)
    assert c[3].fallback_blocks > 0


def test_expert_by_expert_with_shared_k_max_equals_whole_tensor():
    blocks, scales = random_mxfp4((4, 6, 3), 10, 60, 140)  # [E, out, G]: some fallback blocks
    scales[1] = torch.randint(100, 110, (6, 3), dtype=torch.uint8)  # an expert far below the tensor's k_max
    scales[2, 0, :2] = 0
    whole = assert_same_as_modelopt(blocks, scales)
    parts = [cast_mxfp4_to_nvfp4(blocks[e], scales[e], k_max=whole[3].k_max) for e in range(4)]
    assert whole[3].fallback_blocks > 0
    assert torch.equal(torch.stack([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.stack([p[1] for p in parts]).view(torch.uint8), whole[1].view(torch.uint8))
    assert all(torch.equal(p[2], whole[2]) for p in parts)
    total = parts[0][3] + parts[1][3] + parts[2][3] + parts[3][3]
    assert total == whole[3]


@pytest.mark.parametrize("scale_range", [(115, 125), (2, 12)])  # (2, 12): byte 0 within 17 of k_max
def test_zero_scale_bytes(scale_range):
    blocks, scales = random_mxfp4((4, 8), 6, *scale_range)
    scales[0, :3] = 0  # random nibbles under scale byte 0 (values <= 6 * 2**-127)
    scales[1, :2] = 0
    blocks[1, :2] = torch.tensor([0x00, 0x88, 0x80, 0x08], dtype=torch.uint8).repeat(4)
    _, _, _, stats = assert_same_as_modelopt(blocks, scales)
    # ModelOpt counts scale-0 blocks as lossless; they are bit-exact only when k_max <= -110 (k = -127 is
    # then inside the E4M3 window), else requantized (their values, <= 6 * 2**-127, flush towards 0)
    in_window = stats.k_max <= -110
    assert stats.zero_scale_blocks == 5 and stats.fallback_blocks == (0 if in_window else 5)
    assert stats.modelopt_lossless_blocks == scales.numel()


@pytest.mark.parametrize("fill", [0x00, 0x88])
def test_all_zero_tensor(fill):
    blocks = torch.full((2, 3, 2, 16), fill, dtype=torch.uint8)
    scales = torch.zeros(2, 3, 2, dtype=torch.uint8)
    packed, _, global_scale, stats = assert_same_as_modelopt(blocks, scales)
    assert int(packed.max()) == 0 and global_scale.item() == 2.0**-8
    assert stats == CastStats(0, 12, 12, 0, 12)


@pytest.mark.parametrize("k_max", [-120, -110, 0, 5])
def test_only_zero_scale_bytes_under_a_shared_k_max(k_max):
    blocks, _ = random_mxfp4((3, 2), 8, 0, 1)  # random nibbles, every scale byte 0 (k = -127)
    scales = torch.zeros(3, 2, dtype=torch.uint8)
    packed, block_scale, _, stats = assert_same_as_modelopt(blocks, scales, k_max)
    exact = 6 if k_max <= -110 else 0
    assert stats == CastStats(exact, 6 - exact, 6, k_max, 6)
    if k_max <= -110:  # k = -127 is within 17 of k_max: exact scale 2**(-127 - k_max + 8), bytes verbatim
        assert (block_scale.float() == 2.0 ** (-119 - k_max)).all()
        assert torch.equal(packed, clear_negative_zero(blocks).reshape(packed.shape))


def test_top_scale_bytes_253_254_match_modelopt_overflow():
    blocks = torch.full((1, 4, 16), 0x64, dtype=torch.uint8)  # codes 2.0 and 4.0
    scales = torch.tensor([[254, 253, 252, 240]], dtype=torch.uint8)
    packed, _, _, _ = assert_same_as_modelopt(blocks, scales)
    # 4 * 2**126 and 2 * 2**127 overflow bf16 to inf, which ModelOpt encodes as 6 (code 7)
    assert packed[0, :16].unique().tolist() == [0x77] and packed[0, 32:].unique().tolist() == [0x64]
    stats = cast_mxfp4_to_nvfp4(blocks, scales)[3]
    assert (stats.exact_blocks, stats.fallback_blocks, stats.modelopt_lossless_blocks) == (2, 2, 4)


def test_cast_of_encoded_weights_roundtrips_to_the_mxfp4_values():
    x = torch.randn(2, 8, 256, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    blocks, scales = encode_mxfp4(x)
    packed, block_scale, global_scale, stats = assert_same_as_modelopt(blocks, scales)
    assert stats.fallback_blocks == 0
    ours = dequantize_nvfp4(packed, block_scale, global_scale, torch.float32)
    assert same_values_ignoring_zero_sign(ours, decode_mxfp4(blocks, scales, torch.float32))


def test_rejections():
    blocks, scales = random_mxfp4((2, 3), 0, 100, 130)
    bad = scales.clone()
    bad[1, 2] = 0xFF
    with pytest.raises(ValueError, match=r"0xFF.*\(1, 2\)"):
        cast_mxfp4_to_nvfp4(blocks, bad)
    with pytest.raises(ValueError, match="below this tensor's own k_max"):
        cast_mxfp4_to_nvfp4(blocks, scales, mxfp4_kmax(scales) - 1)
    with pytest.raises(ValueError, match="outside"):
        cast_mxfp4_to_nvfp4(blocks, scales, 200)
    with pytest.raises(ValueError, match=r"\(2, 3, 16\).*\(2, 2\)"):
        cast_mxfp4_to_nvfp4(blocks, scales[:, :2])


def test_mxfp4_kmax_matches_modelopt():
    from modelopt.torch.export.shard_cast_utils import mxfp4_kmax as modelopt_kmax

    for scales in (
        torch.tensor([0, 3, 130, 127], dtype=torch.uint8),
        torch.zeros(5, dtype=torch.uint8),
        torch.tensor([1, 0], dtype=torch.uint8),
        torch.tensor([[127, 0], [254, 12]], dtype=torch.uint8),
    ):
        assert mxfp4_kmax(scales) == modelopt_kmax(scales)


def test_clear_negative_zero_exhaustive():
    byte = torch.arange(256, dtype=torch.uint8)
    low, high = byte & 0xF, byte >> 4
    expected = torch.where(low == 8, 0, low) | (torch.where(high == 8, 0, high) << 4)
    assert torch.equal(clear_negative_zero(byte), expected.to(torch.uint8))


def test_cast_stats_add():
    a = CastStats(exact_blocks=5, fallback_blocks=1, zero_scale_blocks=2, k_max=3)
    b = CastStats(exact_blocks=7, fallback_blocks=0, zero_scale_blocks=0, k_max=9)
    assert a + b == CastStats(12, 1, 2, 9)
    assert (a + b).total_blocks == 13
