"""E2M1 codec: bit-identical to ModelOpt's NVFP4QTensor._cast_fp4 on a dense float32 grid."""

import pytest
import torch

from plugins.formats.e2m1 import (
    E2M1_VALUES,
    decode_e2m1,
    decode_packed_e2m1,
    encode_e2m1,
    encode_e2m1_reference,
    pack_nibbles,
    pack_nibbles_reference,
    unpack_nibbles,
)

INF = float("inf")
MIDPOINTS = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
GRID_POINTS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def modelopt_cast_fp4(x: torch.Tensor) -> torch.Tensor:
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    return NVFP4QTensor._cast_fp4(x.clone())  # it takes abs_() in place


def dense_float32_grid() -> torch.Tensor:
    """Every float32 whose top 16 bits take each of 65536 values, with 4 low-bit patterns; NaNs dropped,
    plus every tie point and grid point, their nextafter neighbours both ways, signed, and extremes."""
    top = torch.arange(1 << 16, dtype=torch.int64) << 16
    bits = torch.cat([top, top | 1, top | 0x8000, top | 0xFFFF])
    grid = ((bits + (1 << 31)) % (1 << 32) - (1 << 31)).to(torch.int32).view(torch.float32)
    grid = grid[~torch.isnan(grid)]
    special = torch.tensor(MIDPOINTS + GRID_POINTS + [7.0, 8.0, 1e30, 3.4e38, 1e-45, 1e-38, INF])
    neighbours = torch.cat(
        [special, torch.nextafter(special, torch.tensor(INF)), torch.nextafter(special, torch.tensor(0.0))]
    )
    return torch.cat([grid, neighbours, -neighbours, torch.tensor([0.0, -0.0, -INF])])


def test_value_table():
    assert E2M1_VALUES.dtype == torch.float32
    assert E2M1_VALUES[:8].tolist() == GRID_POINTS
    assert E2M1_VALUES[8:].tolist() == [-v for v in GRID_POINTS]
    assert torch.signbit(E2M1_VALUES[8]) and not torch.signbit(E2M1_VALUES[0])


def test_encode_bit_identical_to_modelopt_on_dense_grid():
    x = dense_float32_grid()
    assert x.numel() > 250_000
    assert torch.equal(encode_e2m1(x), modelopt_cast_fp4(x))


def test_reference_agrees_with_fast_path_on_dense_grid():
    x = dense_float32_grid()
    assert torch.equal(encode_e2m1_reference(x), encode_e2m1(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_encode_half_precision_inputs(dtype):
    x = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)
    x = x[~torch.isnan(x)]
    assert torch.equal(encode_e2m1(x), modelopt_cast_fp4(x.float()))


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (0.25, 0), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6), (5.0, 6),  # ties -> even code
        (0.2500001, 1), (0.7499999, 1), (5.000001, 7), (6.0, 7), (7.0, 7), (1e30, 7), (INF, 7),
        (-0.0, 0), (-0.1, 8), (-0.25, 8), (-0.75, 10), (-6.0, 15), (-INF, 15),
    ],
)  # fmt: skip
def test_explicit_codes(value, code):
    assert encode_e2m1(torch.tensor([value])).item() == code


def test_encode_rejects_nan_with_index():
    x = torch.zeros(2, 3)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN at index \(1, 2\)"):
        encode_e2m1(x)


def test_encode_rejects_float64():
    with pytest.raises(ValueError, match="float64"):
        encode_e2m1(torch.zeros(4, dtype=torch.float64))


def test_encode_does_not_modify_input():
    x = torch.randn(64) * 4
    before = x.clone()
    encode_e2m1(x)
    assert torch.equal(x.view(torch.int32), before.view(torch.int32))


def test_decode_then_encode_roundtrips_every_code_except_negative_zero():
    codes = torch.arange(16, dtype=torch.uint8)
    values = decode_e2m1(codes)
    assert torch.equal(values.view(torch.int32), E2M1_VALUES.view(torch.int32))
    expected = codes.clone()
    expected[8] = 0  # -0.0 is not < 0: it encodes as +0
    assert torch.equal(encode_e2m1(values), expected)
    assert decode_e2m1(codes, torch.bfloat16).dtype == torch.bfloat16


def test_decode_rejects_bad_codes():
    with pytest.raises(ValueError, match="0..15"):
        decode_e2m1(torch.tensor([16], dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        decode_e2m1(torch.tensor([1]))


def test_pack_layout_low_nibble_is_even_element():
    codes = torch.tensor([0x1, 0x2, 0xF, 0x8], dtype=torch.uint8)
    assert pack_nibbles(codes).tolist() == [0x21, 0x8F]
    assert unpack_nibbles(torch.tensor([0x21, 0x8F], dtype=torch.uint8)).tolist() == [1, 2, 15, 8]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(2,), (4, 32), (3, 8, 64)])
def test_pack_unpack_roundtrip_and_reference(seed, shape):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, shape, dtype=torch.uint8, generator=g)
    packed = pack_nibbles(codes)
    assert packed.shape == (*shape[:-1], shape[-1] // 2)
    assert torch.equal(packed, pack_nibbles_reference(codes))
    assert torch.equal(unpack_nibbles(packed), codes)
    broadcast = codes.unsqueeze(0).expand(2, *shape)  # non-contiguous input
    assert torch.equal(pack_nibbles(broadcast), pack_nibbles_reference(broadcast))


def test_decode_packed_matches_decode_of_unpacked_codes():
    codes = torch.randint(0, 16, (5, 3, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    values = decode_packed_e2m1(pack_nibbles(codes))
    assert torch.equal(values.view(torch.int32), decode_e2m1(codes).view(torch.int32))


def test_pack_rejects_odd_length_and_wide_codes():
    with pytest.raises(ValueError, match="even"):
        pack_nibbles(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="0..15"):
        pack_nibbles(torch.tensor([0, 16], dtype=torch.uint8))
