"""The Triton attention kernels (plugins.attention.fused: prefill and decode) against the plain-torch
reference (plugins.attention.reference.attention), on CPU through Triton's interpreter, over a named
grid: GQA ratios 1..8, sliding windows shorter and longer than the sequence, chunked prefill after a
cache (q_start > 0), decode over a cache, sinks large (dominating the softmax) and small.

Tolerances (explicit, per dtype):
* float32: |kernel - reference| <= 1e-5 * max|reference| + 1e-6 elementwise (seen: ~5e-7 absolute;
  the kernel's online base-2 softmax and the reference's one-shot softmax round differently).
* bfloat16: relative L2 error <= 1e-2 against the float32 reference on the same bf16 inputs (the
  kernel's softmax runs in float32 and P is rounded to bf16 for the second matmul).
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from plugins.attention import fused  # noqa: E402
from plugins.attention import triton_kernels as K  # noqa: E402
from plugins.attention.reference import attention as reference  # noqa: E402

if type(K.attn_prefill_kernel).__name__ != "InterpretedFunction":
    pytest.skip("plugins.attention kernels were imported before TRITON_INTERPRET=1 was set; run this "
                "module in its own process", allow_module_level=True)

F32_RTOL, F32_ATOL = 1e-5, 1e-6
BF16_REL_L2 = 1e-2

# name: (B, T new queries, S cached keys, Hq, Hkv, D, window, q_start, sink scale)
CASES = {
    "prefill-mha-full": (2, 33, 33, 2, 2, 16, None, 0, 1.0),
    "prefill-gqa8-window-shorter": (1, 40, 40, 8, 1, 32, 8, 0, 1.0),
    "prefill-gqa4-window-longer": (1, 24, 24, 8, 2, 16, 64, 0, 1.0),
    "prefill-gqa2-large-sinks": (1, 21, 21, 4, 2, 16, None, 0, 8.0),
    "chunk-after-cache-window": (1, 18, 50, 4, 1, 16, 16, 32, 1.0),
    "decode-1tok-full-small-sinks": (3, 1, 70, 8, 1, 64, None, 69, 0.01),
    "decode-1tok-window": (2, 1, 70, 8, 2, 16, 16, 69, 1.0),
    "decode-3tok-gqa4-large-sinks": (1, 3, 45, 8, 2, 16, None, 42, 8.0),
}
DECODE_CASES = [c for c, v in CASES.items() if v[1] * (v[3] // v[4]) <= fused.DECODE_MAX_ROWS]


def inputs(case: str, dtype: torch.dtype):
    b, t, s, hq, hkv, d, window, q_start, sink_scale = CASES[case]
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    q = torch.randn(b, t, hq, d, generator=g).to(dtype)
    k = torch.randn(b, s, hkv, d, generator=g).to(dtype)
    v = torch.randn(b, s, hkv, d, generator=g).to(dtype)
    sinks = torch.randn(hq, generator=g) * sink_scale
    return (q, k, v, sinks), dict(sm_scale=d**-0.5, sliding_window=window, q_start=q_start)


def assert_f32_close(out, ref):
    torch.testing.assert_close(out, ref, rtol=F32_RTOL, atol=F32_ATOL + F32_RTOL * ref.abs().max().item())


@pytest.mark.parametrize("case", CASES)
def test_prefill_kernel_float32(case):
    args, kw = inputs(case, torch.float32)
    assert_f32_close(fused.attention_prefill(*args, **kw), reference(*args, **kw))


@pytest.mark.parametrize("case", DECODE_CASES)
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_kernel_float32(case, splits):
    args, kw = inputs(case, torch.float32)
    assert_f32_close(fused.attention_decode(*args, **kw, num_splits=splits), reference(*args, **kw))


@pytest.mark.parametrize("case", ["prefill-gqa8-window-shorter", "chunk-after-cache-window",
                                  "decode-1tok-full-small-sinks", "decode-3tok-gqa4-large-sinks"])
def test_dispatch_bfloat16(case):
    args, kw = inputs(case, torch.bfloat16)
    out = fused.attention(*args, **kw)
    assert out.dtype == torch.bfloat16
    ref = reference(*(a.float() for a in args), **kw)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    assert err <= BF16_REL_L2, f"relative L2 error {err:.2e} > {BF16_REL_L2}"


def test_rows_with_no_visible_key_in_a_split_are_exact():
    """A window of 1 leaves most splits empty for most rows: the merge must ignore them."""
    args, kw = inputs("decode-1tok-window", torch.float32)
    kw["sliding_window"] = 1
    assert_f32_close(fused.attention_decode(*args, **kw, num_splits=4), reference(*args, **kw))


def test_rejects_bad_arguments():
    args, kw = inputs("prefill-gqa8-window-shorter", torch.float32)  # head_dim 32
    q, k, v, sinks = args
    with pytest.raises(ValueError, match="need keys up to"):
        fused.attention(q, k, v, sinks, **{**kw, "q_start": 5})
    with pytest.raises(ValueError, match="head_dim 24"):
        fused.attention(q[..., :24], k[..., :24], v[..., :24], sinks, **kw)
    with pytest.raises(ValueError, match="sliding_window=0"):
        fused.attention(q, k, v, sinks, **{**kw, "sliding_window": 0})
