"""The Triton MoE kernels (plugins.moe.fused) against the plain-torch reference, on CPU through Triton's
interpreter, over a named grid of shapes.

Tolerances (explicit, per dtype):
* float32 activations: |kernel - reference| <= 2e-6 * max|reference| + 1e-6 elementwise. Both sides
  decode the same weights exactly and accumulate in float32 in a different order (~1e-7 relative seen).
* bfloat16 activations: relative L2 error <= 2e-2 against a float32 reference on the same bf16-rounded
  inputs and bf16-decoded weights. The reference's own bf16 result is ~7e-3 away from that; the kernel
  on a GPU ~2e-3 (bench_gpu.py checks <= 1e-2 there), but Triton's interpreter truncates float32 ->
  bfloat16 instead of rounding to nearest, which costs ~1.4e-2 wherever weights need rounding.
* routing: identical expert ids (random float32 logits have no ties) and weights within 1e-6.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

from plugins.formats.mxfp4 import encode_mxfp4  # noqa: E402
from plugins.formats.nvfp4 import quantize_nvfp4  # noqa: E402
from plugins.moe import Bf16Experts, ExpertWeights, Mxfp4Experts, Nvfp4Experts, Router, fused, moe  # noqa: E402
from plugins.moe import triton_kernels as K  # noqa: E402
from plugins.moe.tensors import MoeTensors, reference_moe_from_logits  # noqa: E402

if type(K._route_kernel).__name__ != "InterpretedFunction":
    pytest.skip("plugins.moe kernels were imported before TRITON_INTERPRET=1 was set; run this module "
                "in its own process", allow_module_level=True)

F32_RTOL, F32_ATOL = 2e-6, 1e-6
BF16_REL_L2 = 2e-2  # interpreter: truncating bf16 casts (see above)

# name: (tokens N, experts E, top_k, hidden H, intermediate I). H=96/I=96 are not multiples of the
# interpreter tiles (64), so the K and N tails are masked; H=128/I=64 are exact multiples.
SHAPES = {
    "decode-1tok-e4-k1": (1, 4, 1, 128, 64),
    "decode-2tok-e32-k4-padded": (2, 32, 4, 96, 96),
    "batch-37tok-e8-k3-padded": (37, 8, 3, 96, 96),
    "prefill-256tok-e8-k2": (256, 8, 2, 128, 64),
}
FORMATS = ("bf16", "mxfp4", "nvfp4", "nvfp4-kmajor")
# nvfp4-spread (`k_major(spread=True)`) needs H and I multiples of 64; 192 = one 128-input chunk + the 64 tail
SPREAD_SHAPES = {
    "decode-1tok-e4-k1": SHAPES["decode-1tok-e4-k1"],            # gate_up one chunk, down only the tail
    "decode-3tok-e8-k4-tail": (3, 8, 4, 192, 192),               # chunk + tail in both projections
    "prefill-256tok-e8-k2": SHAPES["prefill-256tok-e8-k2"],
}
SPLIT_K_CONFIG = fused.MoeConfig(16, 64, 32, split_k=3)  # small tiles, down projection split in 3


def make_layer(e: int, h: int, i: int, fmt: str, g: torch.Generator) -> tuple[Router, ExpertWeights]:
    w1 = torch.randn(e, h, 2 * i, generator=g) * 2 * h**-0.5  # large enough to reach the SwiGLU clamps
    w2 = torch.randn(e, i, h, generator=g) * i**-0.5
    b1, b2 = torch.randn(e, 2 * i, generator=g), torch.randn(e, h, generator=g) * 0.1
    if fmt == "bf16":
        gu, dn = Bf16Experts(w1), Bf16Experts(w2)
    elif fmt == "mxfp4":
        gu, dn = (Mxfp4Experts(*encode_mxfp4(w.transpose(1, 2).contiguous())) for w in (w1, w2))
    else:
        def nv(w):
            packed, scale, gs = quantize_nvfp4(w.transpose(1, 2).contiguous())       # [E, out, in/2]
            return Nvfp4Experts(packed.mT.contiguous(), scale.mT.contiguous(), gs)    # [E, in/2, out]
        gu, dn = nv(w1), nv(w2)
    router = Router(torch.randn(e, h, generator=g), torch.randn(e, generator=g))
    return router, ExpertWeights(gu, b1.to(torch.bfloat16), dn, b2.to(torch.bfloat16))


def tensors(w: ExpertWeights, fmt: str) -> MoeTensors:
    t = MoeTensors.from_weights(w)
    return {"nvfp4-kmajor": t.k_major, "nvfp4-spread": lambda: t.k_major(spread=True)}.get(fmt, lambda: t)()


def poisoned(x: torch.Tensor, axis: int, pad: int, byte: int) -> torch.Tensor:
    """x as a view into a buffer whose `axis` runs `pad` elements further, those filled with `byte` (a
    NaN block scale, a -6 code): a kernel that reads past the inputs turns its output NaN."""
    shape = list(x.shape)
    shape[axis] += pad
    buf = torch.full(shape, byte, dtype=torch.uint8).view(x.dtype)
    view = buf.narrow(axis, 0, x.shape[axis])
    view.copy_(x)
    return view


def poisoned_tensors(t: MoeTensors) -> MoeTensors:
    """The same experts with NaN scales and -6 codes stored right past every input row (K-major rows)."""
    def proj(p):
        if p.fmt.value == "mxfp4":   # blocks [E, out, in/32, 16], scales [E, out, in/32]: E8M0 0xFF is NaN
            return type(p)(p.fmt, poisoned(p.weight, 2, 2, 0xFF), poisoned(p.scale, 2, 16, 0xFF))
        km = p.k_major()            # codes [E, in/2, out], scales [E, in/16, out] (E4M3 0x7F is NaN)
        return type(p)(p.fmt, poisoned(km.weight.mT, 2, 16, 0xFF).mT,
                       poisoned(km.scale.mT, 2, 16, 0x7F).mT, km.global_scale)
    return MoeTensors(proj(t.gate_up), t.gate_up_bias, proj(t.down), t.down_bias)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_nothing_past_the_inputs_is_read(fmt):
    """K not a multiple of the K step (H = I = 96, BLOCK_K 128): the last step's weight and scale tiles
    reach past the inputs into whatever the storage holds there; those bytes must be masked, not merely
    multiplied by zero activations. MXFP4 shows it (an E8M0 0xFF scale is NaN, and NaN * 0 is NaN);
    NVFP4's E4M3 scales have no infinity and the kernel's bit-exact decode reads the NaN byte 0x7F as 480,
    so there a read past the inputs is invisible in the output and this checks the strided storage only."""
    n, e, k, h, i = SHAPES["batch-37tok-e8-k3-padded"]
    g = torch.Generator().manual_seed(11)
    router, w = make_layer(e, h, i, fmt, g)
    x = torch.randn(n, h, generator=g)
    ref = moe(x, router, w, k)
    out = fused.fused_moe(x, F.linear(x, router.weight, router.bias), poisoned_tensors(MoeTensors.from_weights(w)), k)
    torch.testing.assert_close(out, ref, rtol=F32_RTOL, atol=F32_ATOL + F32_RTOL * ref.abs().max().item())


def truth(w: ExpertWeights, dtype: torch.dtype) -> ExpertWeights:
    """Float32 experts holding the weights as decoded to `dtype` (what the kernel's dot multiplies)."""
    def dec(p):
        return Bf16Experts(torch.stack([p.expert(e, dtype) for e in range(p.num_experts)]).float())
    return ExpertWeights(dec(w.gate_up), w.gate_up_bias.to(dtype).float(), dec(w.down),
                         w.down_bias.to(dtype).float())


def assert_float32_matches_reference(dims: tuple, fmt: str, seed: int, config=None) -> None:
    """fused_moe on a random layer of `dims` (N, E, top_k, H, I) stored as `fmt` against the reference."""
    n, e, k, h, i = dims
    g = torch.Generator().manual_seed(seed)
    router, w = make_layer(e, h, i, fmt, g)
    x = torch.randn(n, h, generator=g)
    ref = moe(x, router, w, k)
    out = fused.fused_moe(x, F.linear(x, router.weight, router.bias), tensors(w, fmt), k, config=config)
    torch.testing.assert_close(out, ref, rtol=F32_RTOL, atol=F32_ATOL + F32_RTOL * ref.abs().max().item())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_moe_float32_matches_reference(shape, fmt):
    assert_float32_matches_reference(SHAPES[shape], fmt, len(shape) * 10 + FORMATS.index(fmt))


def distinct_logits(n: int, e: int, g: torch.Generator) -> torch.Tensor:
    """[N, E] logits exactly representable in bf16 with no ties (the kernel breaks ties by lowest
    index, torch.topk by its own order: random bf16 logits tie often)."""
    return torch.stack([torch.randperm(e, generator=g) for _ in range(n)]).float() * 0.25


@pytest.mark.parametrize("shape,fmt", [("decode-2tok-e32-k4-padded", "bf16"),
                                       ("decode-2tok-e32-k4-padded", "mxfp4"),
                                       ("decode-2tok-e32-k4-padded", "nvfp4-kmajor"),
                                       ("prefill-256tok-e8-k2", "nvfp4")])
def test_fused_moe_bfloat16_within_bf16_precision(shape, fmt):
    n, e, k, h, i = SHAPES[shape]
    g = torch.Generator().manual_seed(7)
    _, w = make_layer(e, h, i, fmt, g)
    x = torch.randn(n, h, generator=g).to(torch.bfloat16)
    logits = distinct_logits(n, e, g).to(torch.bfloat16)
    exact = reference_moe_from_logits(x.float(), logits.float(), truth(w, torch.bfloat16), k, 7.0, 1.702)
    out = fused.fused_moe(x, logits, tensors(w, fmt), k)
    assert out.dtype == torch.bfloat16
    err = ((out.float() - exact).norm() / exact.norm()).item()
    assert err <= BF16_REL_L2, f"relative L2 error {err:.2e} > {BF16_REL_L2}"


def test_split_k_and_small_tiles_match():
    assert_float32_matches_reference(SHAPES["decode-2tok-e32-k4-padded"], "nvfp4", 3, SPLIT_K_CONFIG)


@pytest.mark.parametrize("n,e,k,one_program,skew", [
    (1, 4, 1, True, 0), (7, 8, 2, True, 0), (32, 128, 4, True, 0),      # decode batches: one program
    (1, 4, 1, False, 0), (7, 8, 2, False, 0), (32, 128, 4, False, 0),   # the same through route + align
    (64, 32, 4, False, 0), (256, 16, 4, False, 0),
    # every token picks experts 0..skew-1: their groups fill whole blocks exactly (16 and 32 rows), the
    # edge where a pair placed one slot late would land in the next expert's block
    (16, 8, 1, True, 1), (16, 8, 2, True, 2), (32, 8, 2, True, 2), (32, 8, 2, False, 2), (64, 4, 2, True, 1),
    # expert counts that are not a power of two (the kernels pad the expert axis), both paths
    (5, 6, 2, True, 0), (5, 6, 2, False, 0), (40, 12, 4, False, 0)])
@pytest.mark.parametrize("logit_scale", [1.0, 100.0])  # 100: exp of the raw logits would overflow float32
def test_route_and_sort(n, e, k, one_program, skew, logit_scale, monkeypatch):
    """Both routing paths (one program up to FUSED_ROUTE_MAX_PAIRS pairs, else route + align). Logits are
    all negative (an expert column of the padding must never win) or spread far past exp's float32 range."""
    monkeypatch.setattr(fused, "FUSED_ROUTE_MAX_PAIRS", fused.FUSED_ROUTE_MAX_PAIRS if one_program else 0)
    assert (n * k <= fused.FUSED_ROUTE_MAX_PAIRS) == one_program
    g = torch.Generator().manual_seed(n * 100 + e)
    logits = torch.randn(n, e, generator=g) * logit_scale - 10.0
    logits[:, :skew] += 100.0 * torch.arange(skew, 0, -1)                 # expert 0 first, then 1, ...
    block_m = 16
    weights, ids, (sorted_ids, block_expert, total) = fused.route_and_sort(logits, k, block_m)
    top, chosen = torch.topk(logits, k, dim=-1)
    assert torch.equal(ids.long(), chosen)
    torch.testing.assert_close(weights, torch.softmax(top, dim=-1), rtol=1e-6, atol=1e-6)
    nk, total = n * k, int(total)
    valid = sorted_ids[:total]
    assert sorted(valid[valid < nk].tolist()) == list(range(nk))      # every (token, slot) once
    assert total % block_m == 0 and bool((sorted_ids[total:] == nk).all())
    owners = block_expert[: total // block_m].long().repeat_interleave(block_m)  # [total]
    real = valid < nk
    assert torch.equal(ids.flatten()[valid[real].long()].long(), owners[real])   # rows sit in their expert's blocks
    assert bool((block_expert[total // block_m:] == -1).all())
    counts = torch.bincount(chosen.flatten(), minlength=e)
    assert total == int(((counts + block_m - 1) // block_m * block_m).sum())


def test_rejects_bad_arguments():
    g = torch.Generator().manual_seed(0)
    router, w = make_layer(4, 64, 32, "mxfp4", g)
    t = MoeTensors.from_weights(w)
    x = torch.randn(2, 64, generator=g)
    with pytest.raises(ValueError, match="top_k=5"):
        fused.fused_moe(x, torch.randn(2, 4), t, 5)
    with pytest.raises(ValueError, match=r"router logits \(2, 3\)"):
        fused.fused_moe(x, torch.randn(2, 3), t, 2)
    with pytest.raises(ValueError, match="block_k=16"):
        fused.MoeConfig(16, 32, 16)


@pytest.mark.parametrize("fmt", ["nvfp4", "nvfp4-kmajor", "mxfp4", "bf16"])
@pytest.mark.parametrize("config", [
    fused.MoeConfig(16, 64, 32, split_k=3, swap_ab=True),          # weights as the left operand
    fused.MoeConfig(16, 128, 64, swap_ab=True, split_fill=8),      # the decode default's shape
], ids=["swap-splitk3", "swap-fill8"])
def test_swap_ab_configs(fmt, config):
    """The swapped-operand decode path (the GPU default) against the reference, float32."""
    assert_float32_matches_reference(SHAPES["decode-2tok-e32-k4-padded"], fmt, 3, config)


@pytest.mark.parametrize("config", [None, SPLIT_K_CONFIG, fused.MoeConfig(16, 64, 32, split_k=2, swap_ab=True)],
                         ids=["default", "splitk3", "swap-splitk2"])
@pytest.mark.parametrize("shape", SPREAD_SHAPES)
def test_spread_storage_float32_matches_reference(shape, config):
    """Spread storage: 128-input chunks, the 64-input tail, split-K boundaries on chunks (block_k is forced
    to 128: split_k 3 of 192 inputs gives a chunk and a tail program), both operand orders."""
    assert_float32_matches_reference(SPREAD_SHAPES[shape], "nvfp4-spread", len(shape), config)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # sigmoid of the 2**30-scaled gates
@pytest.mark.parametrize("weight_scale", [2.0 ** -30, 1.0, 2.0 ** 30])
def test_spread_storage_is_bit_identical_in_bf16(weight_scale):
    """bf16 activations: the spread decode divides the global scale by 2**(its exponent + 9) and multiplies
    the accumulator back; both steps are exact, so the output equals the checkpoint order's bit for bit
    (same K step), for global scales far from 1 (gate_up weights scaled by 2**-30 .. 2**30)."""
    n, e, k, h, i = SPREAD_SHAPES["decode-3tok-e8-k4-tail"]
    g = torch.Generator().manual_seed(11)
    _, w = make_layer(e, h, i, "nvfp4", g)
    gu = w.gate_up
    w = ExpertWeights(Nvfp4Experts(gu.packed, gu.block_scale, gu.global_scale * weight_scale), w.gate_up_bias,
                      w.down, w.down_bias)
    x = torch.randn(n, h, generator=g).to(torch.bfloat16)
    logits = distinct_logits(n, e, g).to(torch.bfloat16)
    cfg = fused.MoeConfig(16, 64, 64, split_k=2)  # the plain storage in 64-input steps: the same sums
    plain = fused.fused_moe(x, logits, tensors(w, "nvfp4-kmajor"), k, config=cfg)
    spread = fused.fused_moe(x, logits, tensors(w, "nvfp4-spread"), k, config=cfg)
    assert torch.equal(plain.view(torch.int16), spread.view(torch.int16))


def test_spread_storage_round_trips_and_refuses_what_it_cannot_hold():
    g = torch.Generator().manual_seed(5)
    _, w = make_layer(4, 64, 192, "nvfp4", g)
    t = MoeTensors.from_weights(w).k_major(spread=True)
    assert t.gate_up.fmt.value == "nvfp4_spread" and t.gate_up.weight.is_contiguous()
    assert t.gate_up.k_major(spread=True) is t.gate_up and t.down.k_major() is t.down   # kept as stored
    assert torch.equal(t.to_weights().gate_up.packed, w.gate_up.packed)
    assert torch.equal(t.to_weights().down.packed, w.down.packed)
    for bad in (0.0, float("inf")):
        p = MoeTensors.from_weights(w).gate_up
        p = type(p)(p.fmt, p.weight, p.scale, torch.tensor(bad))
        with pytest.raises(ValueError, match="not a positive normal float32"):
            p.k_major(spread=True)
    _, w = make_layer(4, 96, 64, "nvfp4", g)
    with pytest.raises(ValueError, match="multiple of 64 inputs"):
        MoeTensors.from_weights(w).k_major(spread=True)


def test_default_config_by_storage_and_batch():
    """On CUDA: decode tiles up to 8 pairs an expert (spread storage: 6 stages for one token, else 3, as
    measured there), 32-row blocks up to 16, then prefill tiles; the interpreter always takes its own."""
    cuda = torch.device("cuda")
    assert fused.default_config(4, 128, cuda) is fused.DECODE_CONFIG and fused.DECODE_CONFIG.num_stages == 4
    stages = [fused.default_config(p, 128, cuda, spread=True).num_stages for p in (1, 4, 5, 32, 128)]
    assert stages == [6, 6, 3, 3, 3]
    assert fused.default_config(32, 128, cuda, spread=True) == dataclasses.replace(fused.DECODE_CONFIG, num_stages=3)
    assert fused.default_config(16 * 32, 32, cuda, spread=True) is fused.DECODE_WIDE_CONFIG
    assert fused.default_config(17 * 32, 32, cuda) is fused.PREFILL_CONFIG
    assert fused.default_config(4, 128, torch.device("cpu"), spread=True) is fused.INTERPRETER_CONFIG
