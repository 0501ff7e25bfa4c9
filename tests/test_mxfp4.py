"""MXFP4: decode bit-identical to transformers on every (scale byte, code); the synthetic encoder."""

import pytest
import torch

from plugins.formats.mxfp4 import (
    MXFP4_BLOCK,
    decode_mxfp4,
    decode_mxfp4_reference,
    e8m0_exponent,
    encode_mxfp4,
)

BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


def transformers_decode(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """transformers' dequantization, its final transpose(1, 2) undone: [..., G*32]."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    return convert_moe_packed_tensors(blocks, scales, dtype=dtype).transpose(1, 2)


def all_bytes_under_all_scales() -> tuple[torch.Tensor, torch.Tensor]:
    """blocks [1, 256, 16, 16]: row s holds every byte 0..255 (so every code in both nibbles) under scale s."""
    blocks = torch.arange(256, dtype=torch.uint8).reshape(16, 16).expand(1, 256, 16, 16).contiguous()
    scales = torch.arange(256, dtype=torch.uint8).reshape(1, 256, 1).expand(1, 256, 16).contiguous()
    return blocks, scales


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_decode_bit_identical_to_transformers_exhaustive(dtype):
    blocks, scales = all_bytes_under_all_scales()
    ours = decode_mxfp4(blocks, scales, dtype=dtype)
    assert ours.shape == (1, 256, 16 * MXFP4_BLOCK)
    assert same_bits(ours, transformers_decode(blocks, scales, dtype))


def test_scale_byte_255_decodes_like_transformers_ldexp():
    """E8M0 0xFF is NaN in the OCP spec; transformers' exact ldexp by 2**128 gives 0, 2**127 or inf."""
    blocks, scales = all_bytes_under_all_scales()
    row = decode_mxfp4(blocks, scales, dtype=torch.float32)[0, 255]  # [512]
    codes = torch.stack((blocks[0, 255] & 0xF, blocks[0, 255] >> 4), -1).flatten()
    magnitude = codes & 7
    assert not torch.isnan(row).any()
    assert (row[magnitude == 0] == 0).all()
    assert (row[magnitude == 1].abs() == 2.0**127).all()
    assert torch.isinf(row[magnitude > 1]).all()
    assert torch.equal(torch.signbit(row), codes >= 8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_reference_agrees_exhaustive(dtype):
    blocks, scales = all_bytes_under_all_scales()
    assert same_bits(decode_mxfp4_reference(blocks, scales, dtype), decode_mxfp4(blocks, scales, dtype))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(2, 6, 3), (4, 10, 2)])  # [E, out, G]
def test_decode_random_expert_tensors(seed, shape):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (*shape, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 140, shape, dtype=torch.uint8, generator=g)
    ours = decode_mxfp4(blocks, scales)
    assert ours.shape == (*shape[:-1], shape[-1] * MXFP4_BLOCK)
    assert same_bits(ours, transformers_decode(blocks, scales, torch.bfloat16))


def test_decode_across_many_chunks(monkeypatch):
    from plugins.formats import mxfp4

    monkeypatch.setattr(mxfp4, "_DECODE_CHUNK_BLOCKS", 7)  # 3 * 5 * 4 = 60 blocks: 9 chunks, a short last one
    g = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, 256, (3, 5, 4, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(0, 256, (3, 5, 4), dtype=torch.uint8, generator=g)
    assert same_bits(decode_mxfp4(blocks, scales), transformers_decode(blocks, scales, torch.bfloat16))


def test_decode_rejects_mismatched_shapes_naming_both():
    blocks = torch.zeros(2, 3, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"\(2, 3, 16\).*\(2, 4\)"):
        decode_mxfp4(blocks, torch.zeros(2, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(2, 3, 8\)"):
        decode_mxfp4(torch.zeros(2, 3, 8, dtype=torch.uint8), torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        decode_mxfp4(blocks, torch.zeros(2, 3))


def test_e8m0_exponent_is_exact_ceil_log2():
    k = torch.arange(-120, 120)
    at = 6.0 * torch.exp2(k.double())  # amax exactly 6 * 2**k -> k
    assert torch.equal(e8m0_exponent(at.float()), k.to(torch.int32))
    above = torch.nextafter(at.float(), torch.tensor(float("inf")))  # a hair above -> k + 1
    assert torch.equal(e8m0_exponent(above), (k + 1).to(torch.int32))
    edge = torch.tensor([0.0, 1e-45, 6.0 * 2.0**-127, 3.4e38])
    assert e8m0_exponent(edge).tolist() == [-127, -127, -127, 126]


def half_step(scaled_magnitude: torch.Tensor) -> torch.Tensor:
    """Half the E2M1 spacing around a magnitude in [0, 6]: 0.25 below 2, 0.5 below 4, else 1."""
    return torch.where(scaled_magnitude < 2, 0.25, torch.where(scaled_magnitude < 4, 0.5, 1.0))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(4, 64), (2, 8, 96)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_encode_roundtrip_within_mxfp4_rounding(seed, shape, dtype):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * torch.exp2(torch.randint(-20, 20, shape, generator=g))).to(dtype)
    blocks, scales = encode_mxfp4(x)
    assert blocks.shape == (*shape[:-1], shape[-1] // 32, 16) and scales.shape == blocks.shape[:-1]
    pow2 = torch.exp2(scales.float() - 127).repeat_interleave(32, dim=-1)  # [..., K]
    xf = x.float()
    amax = xf.reshape(*shape[:-1], -1, 32).abs().amax(-1).repeat_interleave(32, dim=-1)
    assert bool(((amax <= 6 * pow2) & (amax > 3 * pow2)).all())  # the largest magnitude lands in (3, 6]
    error = (decode_mxfp4(blocks, scales, torch.float32) - xf).abs()
    assert bool((error <= half_step(xf.abs() / pow2) * pow2).all())


def test_encode_zero_block_gets_scale_byte_zero():
    x = torch.zeros(2, 64)
    x[1, 32:] = 1.0
    blocks, scales = encode_mxfp4(x)
    assert scales.tolist() == [[0, 0], [0, 125]]  # 1.0 <= 6 * 2**-2
    assert int(blocks[0].max()) == 0


def modelopt_encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from modelopt.torch.quantization.qtensor.mxfp4_tensor import MXFP4QTensor

    qtensor, scales = MXFP4QTensor.quantize(x, 32)
    return qtensor._quantized_data.reshape(*x.shape[:-1], -1, 16), scales.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_encode_equals_modelopt_on_random_data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 16, 128, generator=g) * 10.0 ** torch.randint(-3, 4, (3, 16, 1), generator=g)
    blocks, scales = encode_mxfp4(x)
    ref_blocks, ref_scales = modelopt_encode(x)
    assert torch.equal(scales, ref_scales)
    ours = decode_mxfp4(blocks, scales, torch.float32)
    theirs = decode_mxfp4(ref_blocks, ref_scales, torch.float32)
    assert torch.equal(ours, theirs)  # values (==, so ModelOpt's -0 for 0 compares equal)


def test_encode_documented_differences_from_modelopt():
    x = torch.zeros(1, 32)
    x[0, :5] = torch.tensor([6.0, 0.75, 1.75, 3.5, 0.0])  # scale 2**0; three odd-midpoint ties and a zero
    blocks, scales = encode_mxfp4(x)
    ref_blocks, ref_scales = modelopt_encode(x)
    assert scales.tolist() == ref_scales.tolist() == [[127]]
    ours = decode_mxfp4(blocks, scales, torch.float32)[0, :5]
    theirs = decode_mxfp4(ref_blocks, ref_scales, torch.float32)[0, :5]
    assert ours.tolist() == [6.0, 1.0, 2.0, 4.0, 0.0]  # ties to even
    assert theirs.tolist() == [6.0, 0.5, 1.5, 3.0, 0.0]  # ModelOpt rounds these ties down
    assert (blocks[0, 0, 2] & 0xF) == 0x0 and (ref_blocks[0, 0, 2] & 0xF) == 0x8  # it writes 0 as -0


def test_encode_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of 32"):
        encode_mxfp4(torch.zeros(2, 48))
    bad = torch.zeros(2, 32)
    bad[1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite value at index \(1, 3\)"):
        encode_mxfp4(bad)
