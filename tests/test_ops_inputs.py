"""Bad inputs to the plugins' public API (the ops trtkit::moe / trtkit::attention, their drop-ins, the
Triton launchers under the interpreter, plugins.moe.tensors): each is refused with one ValueError that
names the argument, the same on every path (CPU reference, fake, Triton), or gives the reference's
result (empty batches)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_custom_ops import attention_inputs, layer
from torch._subclasses.fake_tensor import FakeTensorMode

import plugins.ops as ops
from plugins.attention import attention as attention_reference
from plugins.attention.fused import attention as fused_attention
from plugins.moe.fused import fused_moe
from plugins.moe.tensors import MoeTensors, ProjectionTensors, WeightFormat

N, H, E = 6, 64, 4


def moe_paths():
    """(name, call(x, logits, args, top_k)) for every implementation of trtkit::moe reachable on CPU; args
    are the op's expert arguments (`ops.moe_op_args`)."""
    def op(x, logits, args, k):
        return torch.ops.trtkit.moe(x, logits, *args, k, 7.0, 1.702)

    def fake(x, logits, args, k):
        with FakeTensorMode(allow_non_fake_inputs=True):
            return op(x, logits, args, k)

    def fused(x, logits, args, k):   # what the op's CUDA implementation runs
        return fused_moe(x, logits, ops._moe_tensors(*args), k)

    return {"op": op, "fake": fake, "fused": fused}


def moe_inputs(fmt: str = "mxfp4"):
    router, experts = layer(fmt, e=E, h=H)
    x = torch.randn(N, H, generator=torch.Generator().manual_seed(1))
    return x, F.linear(x, router.weight, router.bias), MoeTensors.from_weights(experts)


MOE_BAD = {  # name: (change to (x, logits, t, top_k), message)
    "x hidden size": (lambda x, lg, t, k: (x[:, :32], lg, t, k), r"x must be \[N, 64\]"),
    "x 3-d": (lambda x, lg, t, k: (x[None], lg, t, k), r"x must be \[N, 64\]"),
    "x int": (lambda x, lg, t, k: (x.to(torch.int32), lg, t, k), r"x must be .*got torch.int32"),
    "x float64": (lambda x, lg, t, k: (x.double(), lg.double(), t, k), r"x must be .*got torch.float64"),
    "logits too few experts": (lambda x, lg, t, k: (x, lg[:, :3], t, k), r"router logits \(6, 3\) torch.float32 must be \[N, E\] = \[6, 4\]"),
    "logits too many experts": (lambda x, lg, t, k: (x, torch.randn(N, 5), t, k), r"router logits \(6, 5\)"),
    "logits too few tokens": (lambda x, lg, t, k: (x, lg[:5], t, k), r"router logits \(5, 4\)"),
    "logits int": (lambda x, lg, t, k: (x, lg.long(), t, k), r"router logits \(6, 4\) torch.int64"),
    "top_k 0": (lambda x, lg, t, k: (x, lg, t, 0), r"top_k=0 must be in \[1, min\(E=4, 8\)\]"),
    "top_k -1": (lambda x, lg, t, k: (x, lg, t, -1), r"top_k=-1"),
    "top_k > E": (lambda x, lg, t, k: (x, lg, t, 5), r"top_k=5"),
    "logits on another device": (lambda x, lg, t, k: (x, lg.to("meta"), t, k), r"router logits on meta"),
}


@pytest.mark.parametrize("path", list(moe_paths()))
@pytest.mark.parametrize("case", list(MOE_BAD))
def test_moe_rejects_bad_inputs_on_every_path(case, path):
    change, message = MOE_BAD[case]
    x, logits, t, k = change(*moe_inputs(), 2)
    with pytest.raises(ValueError, match=message):
        moe_paths()[path](x, logits, ops.moe_op_args(t), k)


@pytest.mark.parametrize("fmt", ["bf16", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("path", list(moe_paths()))
def test_moe_of_no_tokens_is_empty(path, fmt):
    x, logits, t = moe_inputs(fmt)
    out = moe_paths()[path](x[:0], logits[:0], ops.moe_op_args(t), 2)
    assert out.shape == (0, H) and out.dtype == x.dtype


# ---- expert tensors (plugins.moe.tensors): checked when built, so every path refuses them alike -------
def _swap(t: MoeTensors, proj: str, **fields) -> MoeTensors:
    """t with some fields of its gate_up or down projection replaced, built again (and so checked)."""
    p = getattr(t, proj)
    new = ProjectionTensors(fields.get("fmt", p.fmt), fields.get("weight", p.weight), fields.get("scale", p.scale),
                            fields.get("global_scale", p.global_scale))
    return MoeTensors(new, t.gate_up_bias, t.down, t.down_bias) if proj == "gate_up" else \
        MoeTensors(t.gate_up, t.gate_up_bias, new, t.down_bias)


def _half_last(s: torch.Tensor) -> torch.Tensor:
    return s[..., :s.shape[-1] // 2]


PROJECTION_BAD = {  # name: (format, proj, fields(projection) -> replaced fields, message)
    "mxfp4 scale of half the blocks": ("mxfp4", "gate_up", lambda p: dict(scale=_half_last(p.scale)),
                                       r"mxfp4 projection: scale must be torch.uint8 \[E, out, in/32\] = \(4, 64, 2\), got torch.uint8 \(4, 64, 1\)"),
    "mxfp4 scale of fewer experts": ("mxfp4", "down", lambda p: dict(scale=p.scale[:3]), r"scale must be .* = \(4, 64, 1\)"),
    "mxfp4 scale e4m3": ("mxfp4", "down", lambda p: dict(scale=p.scale.view(torch.float8_e4m3fn)),
                         r"scale must be torch.uint8 .*got torch.float8_e4m3fn"),
    "mxfp4 blocks of 8 bytes": ("mxfp4", "gate_up", lambda p: dict(weight=p.weight[..., :8]),
                                r"mxfp4 projection: weight must be torch.uint8 \[E, out, in/32, 16\], got torch.uint8 \(4, 64, 2, 8\)"),
    "nvfp4 scale of half the rows": ("nvfp4", "gate_up", lambda p: dict(scale=p.scale[:, :2]),
                                     r"nvfp4 projection: scale must be torch.float8_e4m3fn \[E, in/16, out\] = \(4, 4, 64\)"),
    "nvfp4 scale uint8": ("nvfp4", "down", lambda p: dict(scale=p.scale.view(torch.uint8)),
                          r"scale must be torch.float8_e4m3fn .*got torch.uint8"),
    "nvfp4 scale bf16": ("nvfp4", "down", lambda p: dict(scale=p.scale.to(torch.bfloat16)), r"got torch.bfloat16"),
    "nvfp4 weight 2-d": ("nvfp4", "down", lambda p: dict(weight=p.weight[0]), r"weight must be torch.uint8 \[E, in/2, out\]"),
    "nvfp4 global_scale of 4": ("nvfp4", "gate_up", lambda p: dict(global_scale=p.global_scale.repeat(4)),
                                r"global_scale must be a torch.float32 scalar, got torch.float32 \(4,\)"),
    "nvfp4 global_scale bf16": ("nvfp4", "gate_up", lambda p: dict(global_scale=p.global_scale.bfloat16()),
                                r"global_scale must be a torch.float32 scalar, got torch.bfloat16"),
    "nvfp4_spread of 32 inputs": ("nvfp4", "down", lambda p: dict(fmt=WeightFormat.NVFP4_SPREAD),
                                  r"nvfp4_spread projection: 32 inputs must be a multiple of 64"),
    "bf16 int weight": ("bf16", "down", lambda p: dict(weight=p.weight.to(torch.int32)),
                        r"bf16 projection: weight must be \[E, in, out\] floats, got torch.int32"),
    "scale on another device": ("nvfp4", "down", lambda p: dict(scale=p.scale.to("meta")),
                                r"weight, scale and global_scale must be on one device, got weight on cpu, scale on meta, "
                                r"global_scale on cpu"),
}


@pytest.mark.parametrize("case", list(PROJECTION_BAD))
def test_projection_tensors_reject_bad_layouts(case):
    fmt, proj, fields, message = PROJECTION_BAD[case]
    _, _, t = moe_inputs(fmt)
    with pytest.raises(ValueError, match=message):
        _swap(t, proj, **fields(getattr(t, proj)))


@pytest.mark.parametrize("path", list(moe_paths()))
def test_moe_op_rejects_a_bad_scale_on_every_path(path):
    """The op's tensors are checked before any path runs: the CPU path used to fail deep in the decoder,
    the Triton one read past the scale tensor."""
    x, logits, t = moe_inputs("nvfp4")
    args = list(ops.moe_op_args(t))
    args[1] = args[1][:, :2]                                          # gate_up_scale of half the rows
    with pytest.raises(ValueError, match=r"nvfp4 projection: scale must be"):
        moe_paths()[path](x, logits, args, 2)


def test_moe_tensors_reject_a_bias_on_another_device():
    _, _, t = moe_inputs("nvfp4")
    with pytest.raises(ValueError, match=r"MoE tensors: gate_up, gate_up_bias, down and down_bias must be on one device, got .*down_bias on meta"):
        MoeTensors(t.gate_up, t.gate_up_bias, t.down, t.down_bias.to("meta"))


# ---- attention ---------------------------------------------------------------------------------------
def attention_paths():
    """(name, call(q, k, v, sinks, **kw)) for every implementation of trtkit::attention reachable on CPU."""
    def fake(*args, **kw):
        with FakeTensorMode(allow_non_fake_inputs=True):
            return ops.attention(*args, **kw)

    return {"reference": attention_reference, "op": ops.attention, "fake": fake, "fused": fused_attention}


KW = dict(sm_scale=0.25, sliding_window=None, q_start=7)   # q [2, 5, 4, 16] at 7..11, k/v [2, 12, 2, 16]


def _kv(hkv: int) -> dict:
    return dict(k=torch.randn(2, 12, hkv, 16), v=torch.randn(2, 12, hkv, 16))


ATTENTION_BAD = {  # name: (replaced arguments, message)
    "Hkv 3 does not divide Hq 4": (_kv(3), r"do not form a GQA problem"),
    "Hkv 0": (_kv(0), r"do not form a GQA problem"),
    "q 3-d": (dict(q=torch.randn(5, 4, 16)), r"q \(5, 4, 16\), k \(2, 12, 2, 16\), v \(2, 12, 2, 16\) must be "
                                               r"\[B, T, Hq, D\] and \[B, S, Hkv, D\]"),
    "sinks of Hkv": (dict(sinks=torch.randn(2)), r"sinks \(2,\) torch.float32 must be \[Hq\] = \[4\]"),
    "sinks [1, Hq]": (dict(sinks=torch.randn(1, 4)), r"sinks \(1, 4\) torch.float32 must be \[Hq\] = \[4\]"),
    "sinks 0-d": (dict(sinks=torch.tensor(0.5)), r"sinks \(\) torch.float32 must be \[Hq\]"),
    "sinks int": (dict(sinks=torch.zeros(4, dtype=torch.int64)), r"sinks \(4,\) torch.int64 must be \[Hq\] = \[4\] floats"),
    "sliding_window 0": (dict(sliding_window=0), r"sliding_window=0 must be None or >= 1"),
    "sliding_window -3": (dict(sliding_window=-3), r"sliding_window=-3 must be None or >= 1"),
    "sm_scale 0": (dict(sm_scale=0.0), r"sm_scale=0.0 must be a positive finite float"),
    "sm_scale negative": (dict(sm_scale=-0.25), r"sm_scale=-0.25 must be"),
    "sm_scale nan": (dict(sm_scale=float("nan")), r"sm_scale=nan must be"),
    "q_start negative": (dict(q_start=-1), r"queries at positions -1..3"),
    "q_start past the cache": (dict(q_start=8), r"queries at positions 8..12 need keys up to there, but k has 12"),
    "sinks on another device": (dict(sinks=torch.randn(4, device="meta")),
                                r"q, k, v and sinks must be on one device, got q on cpu, k on cpu, v on cpu, "
                                r"sinks on meta"),
    "k and v on another device": (dict(k=torch.randn(2, 12, 2, 16, device="meta"),
                                       v=torch.randn(2, 12, 2, 16, device="meta")), r"k on meta, v on meta"),
}


@pytest.mark.parametrize("path", list(attention_paths()))
@pytest.mark.parametrize("case", list(ATTENTION_BAD))
def test_attention_rejects_bad_inputs_on_every_path(case, path):
    change, message = ATTENTION_BAD[case]
    args = dict(zip("q k v sinks".split(), attention_inputs(), strict=True)) | KW | change
    with pytest.raises(ValueError, match=message):
        attention_paths()[path](args.pop("q"), args.pop("k"), args.pop("v"), args.pop("sinks"), **args)


EMPTY = {  # name: (q, k/v slices, q_start)
    "no queries, empty cache": (slice(0, 0), slice(0, 0), 0),
    "no queries": (slice(0, 0), slice(None), 12),
}


@pytest.mark.parametrize("path", list(attention_paths()))
@pytest.mark.parametrize("case", list(EMPTY))
def test_attention_of_no_queries_is_empty(case, path):
    q_rows, kv_rows, q_start = EMPTY[case]
    q, k, v, sinks = attention_inputs()
    out = attention_paths()[path](q[:, q_rows], k[:, kv_rows], v[:, kv_rows], sinks,
                                  **{**KW, "q_start": q_start})
    assert out.shape == (2, 0, 4, 16)


def test_attention_kernel_names_the_tensor_without_a_unit_stride():
    q, k, v, sinks = attention_inputs()
    k = k.transpose(-1, -2).contiguous().transpose(-1, -2)
    with pytest.raises(ValueError, match=r"attention kernel: k has stride 2 on the head dimension; the kernels "
                                         r"need 1 \(pass k.contiguous\(\)\)"):
        fused_attention(q, k, v, sinks, **KW)


# ---- plugins.moe_layer.TrtkitMoE: refused when built, not at its first forward inside a model -----------
LAYER_BAD = {  # name: (TrtkitMoE arguments changed, message)
    "hidden not a multiple of 16": (dict(hidden=40), r"nvfp4 storage needs hidden and intermediate sizes that "
                                                     r"are multiples of 16, got 40 and 32"),
    "intermediate not a multiple of 16": (dict(intermediate=24), r"multiples of 16, got 64 and 24"),
    "top_k 0": (dict(top_k=0), r"top_k=0 must be in \[1, min\(E=4, 8\)\]"),
    "top_k > E": (dict(top_k=5), r"top_k=5 must be in \[1, min\(E=4, 8\)\]"),
}


@pytest.mark.parametrize("case", list(LAYER_BAD))
def test_trtkit_moe_rejects_bad_sizes_when_built(case):
    from plugins.moe_layer import TrtkitMoE

    change, message = LAYER_BAD[case]
    args = dict(num_experts=4, hidden=64, intermediate=32, top_k=2, limit=7.0, alpha=1.702, device="cpu") | change
    with pytest.raises(ValueError, match=message):
        TrtkitMoE(**args)


# ---- non-finite router logits: no check on the hot path, but the kernels route them as the reference does --
@pytest.mark.parametrize("e", [3, 4])   # 3: the routing kernel pads the expert axis to 4
def test_moe_routes_nan_logits_as_the_reference(e):
    """A NaN logit ranks first (torch.topk's order), so the kernels choose real experts and the token's
    output is NaN on both paths; the other tokens are untouched. (The interpreter used to fail on an
    all-NaN row, and the padded expert column could be chosen on a GPU.)"""
    router, experts = layer("mxfp4", e=e, h=H)
    t = MoeTensors.from_weights(experts)
    x = torch.randn(N, H, generator=torch.Generator().manual_seed(1))
    logits = F.linear(x, router.weight, router.bias)
    logits[2] = float("nan")
    logits[4, 1] = float("nan")
    ref, out = (moe_paths()[p](x, logits, ops.moe_op_args(t), 2) for p in ("op", "fused"))
    nan_rows = torch.tensor([i in (2, 4) for i in range(N)])
    assert ref[nan_rows].isnan().all() and out[nan_rows].isnan().all()
    torch.testing.assert_close(out[~nan_rows], ref[~nan_rows], rtol=1e-5, atol=1e-5)
