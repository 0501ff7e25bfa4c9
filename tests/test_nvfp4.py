"""NVFP4 quantize/dequantize: byte-identical to ModelOpt's NVFP4QTensor on random and edge tensors."""

import pytest
import torch

from plugins.formats import nvfp4
from plugins.formats.nvfp4 import (
    NVFP4_BLOCK,
    dequantize_nvfp4,
    nvfp4_global_scale,
    quantize_nvfp4,
    quantize_nvfp4_reference,
)

E4M3 = torch.float8_e4m3fn


def modelopt_quantize(x, block_scale=None, global_scale=None):
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    qtensor, scale, scale_2 = NVFP4QTensor.quantize(x, NVFP4_BLOCK, block_scale, global_scale)
    return qtensor._quantized_data, scale, scale_2


def modelopt_dequantize(packed, block_scale, global_scale, shape, dtype):
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    qtensor = NVFP4QTensor(torch.Size(shape), dtype, packed)
    return qtensor.dequantize(dtype, scale=block_scale, double_scale=global_scale, block_sizes={-1: 16})


def assert_same_quantization(ours, theirs):
    packed, scale, gs = ours
    ref_packed, ref_scale, ref_gs = theirs
    assert torch.equal(packed, ref_packed)
    assert scale.dtype == E4M3 and torch.equal(scale.view(torch.uint8), ref_scale.view(torch.uint8))
    assert gs.dtype == torch.float32 and gs.shape == ()
    assert torch.equal(gs.view(torch.int32), ref_gs.reshape(()).view(torch.int32))


def random_tensor(shape, seed, dtype):
    """Normal values with per-row magnitudes spread over 2**-30..2**30, so block scales clamp both ways."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.exp2(torch.randint(-30, 31, (*shape[:-1], 1), generator=g).float())
    return (torch.randn(shape, generator=g) * rows).to(dtype)


SHAPES = [(16, 64), (3, 8, 128), (2, 5, 2880)]  # 2-D, [E, out, in], and gpt-oss's in=2880


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantize_matches_modelopt_random(seed, shape, dtype):
    x = random_tensor(shape, seed, dtype)
    ours = quantize_nvfp4(x)
    assert ours[0].shape == (*shape[:-1], shape[-1] // 2) and ours[1].shape == (*shape[:-1], shape[-1] // 16)
    assert_same_quantization(ours, modelopt_quantize(x))
    assert_same_quantization(quantize_nvfp4_reference(x), ours)


@pytest.mark.parametrize("seed", [0, 1])
def test_quantize_matches_modelopt_float16(seed):
    x = torch.randn(4, 96, generator=torch.Generator().manual_seed(seed)).half()
    assert_same_quantization(quantize_nvfp4(x), modelopt_quantize(x))


def test_quantize_matches_modelopt_across_many_chunks(monkeypatch):
    monkeypatch.setattr(nvfp4, "_CHUNK_ELEMENTS", 96)  # 3 rows of 32 per chunk, 11 rows: a short last chunk
    x = random_tensor((11, 32), 7, torch.bfloat16)
    assert_same_quantization(quantize_nvfp4(x), modelopt_quantize(x))


def edge_tensor() -> torch.Tensor:
    """One tensor of hand-made blocks. Its amax is 2688, so the global scale is exactly 1.0 and a block of
    amax 6 gets block scale 1.0: E2M1 ties and their float32 neighbours reach the encoder unchanged."""
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
    up, down = torch.nextafter(ties, torch.tensor(9.0)), torch.nextafter(ties, torch.tensor(0.0))
    rows = [
        torch.cat([ties, -ties]),  # exact ties, both signs
        torch.cat([up[:7], torch.tensor([6.0]), down]),  # neighbours just above / below the ties
        torch.cat([torch.tensor([2688.0]), torch.zeros(15)]),  # the tensor amax: block scale 448
        torch.zeros(16),  # zero block: scale 0 -> 1.0
        torch.tensor([-0.0] * 15 + [0.0]),  # signed zeros
        torch.cat([torch.tensor([6.36]), torch.linspace(-6.3, 6.3, 15)]),  # scale 1.06 rounds to 1.0 in
        # E4M3: values beyond 6 * scale saturate
        torch.cat([torch.tensor([1e-3]), torch.full((15,), -1e-6)]),  # clamped scale 2**-9; negatives -> 0x8
        torch.tensor([2.0**-7] + [2.0**-9] * 15) * 6,  # subnormal E4M3 block scales
        torch.cat([torch.tensor([1e-30]), -torch.full((15,), 1e-31)]),  # far below: scale clamps to 2**-9
        torch.tensor([5.999, -5.001, 4.999, -3.499, 3.501, 0.2499, 0.2501, -0.7499] * 2),
    ]
    return torch.stack(rows).reshape(2, 5, 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_matches_modelopt_on_edge_blocks(dtype):
    x = edge_tensor().to(dtype)
    ours = quantize_nvfp4(x)
    assert float(ours[2]) == 1.0
    assert_same_quantization(ours, modelopt_quantize(x))
    assert_same_quantization(quantize_nvfp4_reference(x), ours)


def test_edge_blocks_hit_the_cases_they_name():
    packed, scale, _ = quantize_nvfp4(edge_tensor())
    scale = scale.float().reshape(-1)  # [10]
    assert scale[0] == 1.0 and scale[2] == 448.0 and scale[3] == 1.0
    assert scale[5] == 1.0  # 6.36 / 6 rounded down: the block's 6.36 saturates to code 7
    assert scale[6] == 2.0**-9 and 2.0**-9 <= scale[7] < 2.0**-6  # clamped, and subnormal E4M3
    codes = torch.stack((packed & 0xF, packed >> 4), -1).reshape(10, 16)
    assert codes[0].tolist() == [0, 2, 2, 4, 4, 6, 6, 7, 8, 10, 10, 12, 12, 14, 14, 15]  # ties to even
    assert codes[4].tolist() == [0] * 16  # -0.0 encodes as +0
    assert codes[5, 0] == 7
    assert (codes[6, 1:] == 8).all()  # -1e-6 rounds to zero but keeps its sign, as ModelOpt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_given_scales_match_modelopt(dtype):
    x = random_tensor((4, 8, 64), 3, dtype)
    global_scale = torch.tensor(0.37, dtype=torch.float32)
    block_scale = (torch.rand(4, 8, 4, generator=torch.Generator().manual_seed(3)) * 3 + 0.01).to(E4M3)
    assert_same_quantization(quantize_nvfp4(x, global_scale), modelopt_quantize(x, None, global_scale))
    assert_same_quantization(
        quantize_nvfp4(x, global_scale, block_scale), modelopt_quantize(x, block_scale, global_scale)
    )
    assert_same_quantization(
        quantize_nvfp4(x, block_scale=block_scale), modelopt_quantize(x, block_scale, None)
    )


@pytest.mark.parametrize("zero", [0.0, -0.0])
def test_all_zero_tensor_is_our_one_divergence(zero):
    x = torch.full((2, 3, 32), zero)
    packed, scale, gs = quantize_nvfp4(x)
    assert torch.equal(packed, torch.zeros(2, 3, 16, dtype=torch.uint8))
    assert (scale.float() == 1.0).all() and scale.shape == (2, 3, 2)
    assert gs.item() == 0.0 and gs.shape == ()
    ref_packed, ref_scale, ref_gs = modelopt_quantize(x)
    assert torch.isnan(ref_scale.float()).all() and ref_gs.item() == 0.0  # ModelOpt: 0 / 0 block scales
    assert (dequantize_nvfp4(packed, scale, gs) == 0).all()
    # with a positive global scale there is no divergence
    assert_same_quantization(
        quantize_nvfp4(x, torch.tensor(1.0)), modelopt_quantize(x, None, torch.tensor(1.0))
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), -float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_names_first_index(bad, dtype):
    x = torch.zeros(2, 3, 32, dtype=dtype)
    x[1, 2, 17] = bad
    x[1, 2, 30] = bad
    with pytest.raises(ValueError, match=r"non-finite value at index \(1, 2, 17\)"):
        quantize_nvfp4(x)
    with pytest.raises(ValueError, match=r"non-finite value at index \(1, 2, 17\)"):
        nvfp4_global_scale(x)


def test_rejects_bad_shapes_and_scales():
    with pytest.raises(ValueError, match="K=24"):
        quantize_nvfp4(torch.zeros(2, 24))
    with pytest.raises(ValueError, match="float64"):
        quantize_nvfp4(torch.zeros(2, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="block_scale"):
        quantize_nvfp4(torch.ones(2, 32), block_scale=torch.ones(2, 3).to(E4M3))
    with pytest.raises(ValueError, match="global_scale"):
        quantize_nvfp4(torch.ones(2, 32), global_scale=torch.tensor(-1.0))
    with pytest.raises(ValueError, match="global scale is 0"):
        quantize_nvfp4(torch.ones(2, 32), global_scale=torch.tensor(0.0))
    with pytest.raises(ValueError, match="block_scale \\* global_scale"):
        quantize_nvfp4(torch.ones(2, 32), block_scale=torch.zeros(2, 2).to(E4M3))


def test_quantize_does_not_modify_input():
    x = random_tensor((4, 64), 5, torch.float32)
    before = x.clone()
    quantize_nvfp4(x)
    quantize_nvfp4_reference(x)
    assert torch.equal(x.view(torch.int32), before.view(torch.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_global_scale_matches_modelopt(dtype):
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    for seed in range(3):
        x = random_tensor((5, 64), seed, dtype)
        ref = NVFP4QTensor.get_weights_scaling_factor_2(x)
        assert torch.equal(nvfp4_global_scale(x).view(torch.int32), ref.view(torch.int32))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_dequantize_matches_modelopt(shape, out_dtype):
    x = random_tensor(shape, 11, torch.bfloat16)
    packed, scale, gs = quantize_nvfp4(x)
    ours = dequantize_nvfp4(packed, scale, gs, out_dtype)
    theirs = modelopt_dequantize(packed, scale, gs, shape, out_dtype)
    assert ours.dtype == out_dtype and ours.shape == shape
    assert torch.equal(
        ours.view(torch.int16 if out_dtype != torch.float32 else torch.int32),
        theirs.view(torch.int16 if out_dtype != torch.float32 else torch.int32),
    )


def test_dequantize_code_8_gives_positive_zero_like_modelopt():
    packed = torch.tensor([[0x08, 0x18] + [0] * 6], dtype=torch.uint8)  # codes 8, 0, 8, 1, 0...
    out = dequantize_nvfp4(packed, torch.ones(1, 1).to(E4M3), torch.tensor(2.0))
    assert out[0, :4].tolist() == [0.0, 0.0, 0.0, 1.0] and not torch.signbit(out).any()


def test_dequantize_of_quantize_is_close():
    x = random_tensor((8, 256), 4, torch.float32)
    packed, scale, gs = quantize_nvfp4(x)
    y = dequantize_nvfp4(packed, scale, gs)
    step = (scale.float() * gs).repeat_interleave(16, dim=-1)  # one E2M1 unit per element
    assert bool(((y - x).abs() <= step).all())


def test_dequantize_rejects_mismatched_scale_shape():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        dequantize_nvfp4(torch.zeros(2, 16, dtype=torch.uint8), torch.ones(2, 3).to(E4M3), torch.tensor(1.0))
