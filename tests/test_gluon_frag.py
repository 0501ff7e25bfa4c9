"""The Gluon MoE GEMM on nvfp4_frag storage (`plugins.moe.gluon_frag`) compiled for an H100 (sm_90) on CPU, no
GPU needed (`bench/moe_static.py compile_frag`). Compiling proves every layout conversion the kernel asserts
trivial is one (the stored byte order, the decode's operands and the wgmma A operand agree register for
register); the K loop's SASS then shows what the design is for: the decoded tile goes from the decode's
registers into the tensor cores with no shared-memory round trip (Triton's own GEMM stores and reloads it),
and the loop is shorter than the Triton spread kernel's. Its numerics are checked on CPU by
tests/test_e2m1_frag.py (the PTX emulated) and on the GPU by `bench_gpu.py --only check-moe`."""

from __future__ import annotations

import pytest

pytest.importorskip("triton.experimental.gluon")

from bench import moe_static  # noqa: E402
from plugins.moe import fused  # noqa: E402


@pytest.fixture(scope="module")
def spread_loop() -> int:
    launch = moe_static.capture(moe_static.nvfp4_layer(spread=True), 1, fused.DECODE_CONFIG)[0]
    return moe_static.summarize(launch, moe_static.compile_launch(launch))["loop_instructions"]


@pytest.mark.parametrize("gate_up, block_m", [(True, 16), (False, 32)])
def test_decoded_tile_never_goes_through_shared_memory(gate_up, block_m, spread_loop):
    r = moe_static.compile_frag(gate_up, block_m)
    ops = r["loop_sass"]

    def count(*prefixes: str) -> int:
        return sum(n for op, n in ops.items() if op.startswith(prefixes))

    assert count("STS", "LDSM") == 0, ops                      # no store + reload of the decoded tile
    assert ops.get("LDS.128", 0) == 2 and ops.get("LDS.64", 0) == 2, ops  # codes and scales, wide loads
    assert count("LDGSTS") >= 4 and count("LDG.") == 0, ops    # every global load is a pipelined cp.async
    assert count("HGMMA") == 8, ops                            # two 64 x block_m x 64 wgmma: A from registers
    assert count("BAR") <= 3, ops
    assert r["loop_instructions"] <= 0.92 * spread_loop, (r["loop_instructions"], spread_loop)


def test_frag_experts_off_hopper_fail_with_the_fix():
    """nvfp4_frag runs only on the Gluon kernel: anywhere else fused_moe says so and names the storage to use."""
    import torch

    from plugins.moe.tensors import MoeTensors, ProjectionTensors, WeightFormat

    g = torch.Generator().manual_seed(0)

    def proj(n_in, n_out):
        return ProjectionTensors(WeightFormat.NVFP4, torch.randint(0, 256, (2, n_in // 2, n_out), dtype=torch.uint8,
                                                                   generator=g),
                                 torch.full((2, n_in // 16, n_out), 0.5).to(torch.float8_e4m3fn), torch.tensor(1.0))

    t = MoeTensors(proj(128, 128), torch.zeros(2, 128), proj(64, 128), torch.zeros(2, 128)).k_major(frag=True)
    assert t.gate_up.fmt is WeightFormat.NVFP4_FRAG
    x = torch.randn(3, 128).to(torch.bfloat16)
    with pytest.raises(ValueError, match="nvfp4_frag experts run on Hopper.*TRTKIT_MOE_STORAGE=spread"):
        fused.fused_moe(x, torch.randn(3, 2), t, 1)


def test_swiglu_over_gate_up_splits_matches_torch():
    """`_swiglu_splits_kernel` (Triton's interpreter here): the SwiGLU of the split partial sums, at the sorted rows,
    padding rows untouched; as the one-split epilogue computes it (float32, clamps, then the output dtype)."""
    import torch
    import triton

    from plugins.moe import triton_kernels as K

    g = torch.Generator().manual_seed(0)
    splits, nk, i, limit, alpha = 3, 5, 96, 7.0, 1.702
    y = torch.randn(splits, nk, 2 * i, generator=g) * 6
    sorted_ids = torch.tensor([3, 0, nk, nk, 4, 1, 2, nk], dtype=torch.int32)   # two experts' padded blocks
    act = torch.full((sorted_ids.numel(), i), -99.0).to(torch.bfloat16)
    K._swiglu_splits_kernel[(triton.cdiv(sorted_ids.numel(), 4), triton.cdiv(i, 64))](
        y, sorted_ids, act, nk, i, sorted_ids.numel(), y.stride(0), act.stride(0), limit, alpha, SPLITS=splits,
        BLOCK_R=4, BLOCK_C=64)
    s = y.sum(0)
    gate, up = s[:, 0::2].clamp(max=limit), s[:, 1::2].clamp(-limit, limit)
    want = ((up + 1) * gate * torch.sigmoid(gate * alpha)).to(torch.bfloat16)
    for r, f in enumerate(sorted_ids.tolist()):
        expect = want[f] if f < nk else torch.full((i,), -99.0).to(torch.bfloat16)
        assert torch.allclose(act[r].float(), expect.float(), rtol=1e-2, atol=1e-2), (r, f)
