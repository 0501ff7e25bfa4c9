"""The torch custom ops trtkit::moe and trtkit::attention (plugins.ops): registration only on import,
the CPU (reference) implementation, the fake implementations under opcheck and torch.compile
(fullgraph, CPU), and the whole reference model with the plugins swapped in.

The model-level tests run builder.runtime's forward through a small adapter defined here (builder is
not touched): once through the ops (CPU: the reference implementation, so logits are bit-identical),
once through the Triton kernels under the interpreter (float32; logits within 1e-4 of max |logit|:
every MoE and attention output agrees to ~1e-6 relative, and two layers add little).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import plugins.ops as ops
from builder.checkpoint import Checkpoint
from builder.runtime import GptOssRuntime
from builder.runtime.model import KVCache, rms_norm, rope_tables
from builder.runtime.weights import load_embed, load_head, load_layer
from plugins.attention import apply_rope
from plugins.attention import attention as attention_reference
from plugins.formats.mxfp4 import encode_mxfp4
from plugins.formats.nvfp4 import quantize_nvfp4
from plugins.moe import Bf16Experts, ExpertWeights, Mxfp4Experts, Nvfp4Experts, Router
from plugins.moe import moe as moe_reference
from plugins.moe.tensors import MoeTensors

ROOT = Path(__file__).resolve().parents[1]
MODEL_TOL = 1e-4  # Triton path: max |Δlogit| / max |logit|


def layer(fmt: str, e: int = 4, h: int = 64, i: int = 32, seed: int = 0) -> tuple[Router, ExpertWeights]:
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(e, h, 2 * i, generator=g) * 0.3, torch.randn(e, i, h, generator=g) * 0.3
    if fmt == "bf16":
        gu, dn = Bf16Experts(w1.to(torch.bfloat16)), Bf16Experts(w2.to(torch.bfloat16))
    elif fmt == "mxfp4":
        gu, dn = (Mxfp4Experts(*encode_mxfp4(w.mT.contiguous())) for w in (w1, w2))
    else:
        gu, dn = (Nvfp4Experts(*(t.mT.contiguous() if t.ndim else t
                                 for t in quantize_nvfp4(w.mT.contiguous()))) for w in (w1, w2))
    experts = ExpertWeights(gu, torch.randn(e, 2 * i, generator=g).to(torch.bfloat16), dn,
                            torch.randn(e, h, generator=g).to(torch.bfloat16))
    return Router(torch.randn(e, h, generator=g), torch.randn(e, generator=g)), experts


def attention_inputs(seed: int = 0, t: int = 5, s: int = 12):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, t, 4, 16, generator=g), torch.randn(2, s, 2, 16, generator=g),
            torch.randn(2, s, 2, 16, generator=g), torch.randn(4, generator=g))


# ---- registration ------------------------------------------------------------------------------
def test_importing_plugins_registers_nothing():
    code = ("import torch, plugins, plugins.moe, plugins.attention, plugins.formats\n"
            "assert not hasattr(torch.ops.trtkit, 'moe') and not hasattr(torch.ops.trtkit, 'attention')\n"
            "import plugins.ops\n"
            "assert torch.ops.trtkit.moe.default and torch.ops.trtkit.attention.default\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_schemas():
    assert str(torch.ops.trtkit.attention.default._schema) == (
        "trtkit::attention(Tensor q, Tensor k, Tensor v, Tensor sinks, float sm_scale, SymInt? sliding_window, "
        "SymInt q_start) -> Tensor")
    assert "str weight_format, SymInt top_k, float swiglu_limit, float swiglu_alpha" in str(
        torch.ops.trtkit.moe.default._schema)


# ---- the CPU implementation is the reference ---------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["bf16", "mxfp4", "nvfp4"])
def test_moe_op_on_cpu_is_the_reference(fmt, dtype):
    router, experts = layer(fmt)
    x = torch.randn(9, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    assert torch.equal(ops.moe(x, router, experts, 2), moe_reference(x, router, experts, 2))


def test_moe_op_takes_the_kernels_spread_storage():
    """weight_format nvfp4_spread (`k_major(spread=True)`, what the CUDA kernel decodes fastest): the CPU
    implementation undoes the bit order and gives the reference's result exactly."""
    router, experts = layer("nvfp4", i=64)   # spread storage: inputs a multiple of 64
    x = torch.randn(9, 64, generator=torch.Generator().manual_seed(1))
    args = ops.moe_op_args(MoeTensors.from_weights(experts).k_major(spread=True))
    assert args[-1] == "nvfp4_spread"
    out = torch.ops.trtkit.moe(x, F.linear(x, router.weight, router.bias), *args, 2, 7.0, 1.702)
    assert torch.equal(out, moe_reference(x, router, experts, 2))


@pytest.mark.parametrize("window", [None, 3, 50])
def test_attention_op_on_cpu_is_the_reference(window):
    q, k, v, sinks = attention_inputs()
    kw = dict(sm_scale=0.25, sliding_window=window, q_start=7)
    assert torch.equal(ops.attention(q, k, v, sinks, **kw), attention_reference(q, k, v, sinks, **kw))


def test_moe_op_rejects_mixed_formats_and_unknown_format():
    _, a = layer("mxfp4")
    _, b = layer("nvfp4")
    mixed = MoeTensors.from_weights(ExpertWeights(a.gate_up, a.gate_up_bias, b.down, b.down_bias))
    with pytest.raises(ValueError, match="share one format"):
        ops.moe_op_args(mixed)
    args = list(ops.moe_op_args(MoeTensors.from_weights(a)))
    args[-1] = "int4"
    with pytest.raises(ValueError, match="'int4' is not one of"):
        torch.ops.trtkit.moe(torch.randn(2, 64), torch.randn(2, 4), *args, 2, 7.0, 1.702)


# ---- fake implementations --------------------------------------------------------------------------
def test_opcheck_moe():
    router, experts = layer("mxfp4")
    x = torch.randn(6, 64)
    args = (x, F.linear(x, router.weight, router.bias), *ops.moe_op_args(MoeTensors.from_weights(experts)),
            2, 7.0, 1.702)
    torch.library.opcheck(torch.ops.trtkit.moe.default, args)


def test_opcheck_moe_nvfp4_fake_tensor():
    """float8 scales: torch's schema check cannot compare float8 tensors, so only the fake-tensor and
    AOT-dispatch checks run for NVFP4."""
    router, experts = layer("nvfp4")
    x = torch.randn(6, 64)
    args = (x, F.linear(x, router.weight, router.bias), *ops.moe_op_args(MoeTensors.from_weights(experts)),
            2, 7.0, 1.702)
    torch.library.opcheck(torch.ops.trtkit.moe.default, args,
                          test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("window", [None, 4])
def test_opcheck_attention(window):
    q, k, v, sinks = attention_inputs()
    torch.library.opcheck(torch.ops.trtkit.attention.default, (q, k, v, sinks, 0.25, window, 7))


@pytest.mark.parametrize("dynamic", [False, True])
def test_both_ops_trace_under_torch_compile_fullgraph(dynamic):
    router, experts = layer("nvfp4", h=64)
    wq = torch.randn(64, 64, generator=torch.Generator().manual_seed(3)) * 0.1

    def block(x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
        q = (x @ wq).view(1, x.shape[0], 4, 16)
        a = ops.attention(q, k, v, sinks, sm_scale=0.25, sliding_window=4, q_start=k.shape[1] - x.shape[0])
        h = x + a.reshape(x.shape[0], 64)
        return h + ops.moe(h, router, experts, 2)

    _, k, v, sinks = attention_inputs(t=5, s=12)
    x = torch.randn(5, 64)
    k, v = k[:1], v[:1]
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    assert torch.equal(compiled(x, k, v, sinks), block(x, k, v, sinks))


# ---- the whole model with the plugins swapped in ------------------------------------------------------
MoeFn = Callable[..., torch.Tensor]
AttentionFn = Callable[..., torch.Tensor]


class PluginForward:
    """builder.runtime's gpt-oss forward (embed, layers, head) with the MoE and attention functions
    passed in: the test's adapter, so the model code itself stays untouched."""

    def __init__(self, folder: Path, moe_fn: MoeFn, attention_fn: AttentionFn):
        self.ckpt = Checkpoint.open(folder)
        self.spec, self.moe_fn, self.attention_fn = self.ckpt.spec, moe_fn, attention_fn
        self.embed, self.head = load_embed(self.ckpt), load_head(self.ckpt, torch.float32)
        self.layers = [load_layer(self.ckpt, i, torch.float32) for i in range(self.spec.num_hidden_layers)]

    def _attention(self, x, w, layer, rope, cache):
        spec, (b, t, _) = self.spec, x.shape
        d = spec.head_dim
        q = F.linear(x, w.q_w, w.q_b).view(b, t, spec.num_attention_heads, d)
        k = F.linear(x, w.k_w, w.k_b).view(b, t, spec.num_key_value_heads, d)
        v = F.linear(x, w.v_w, w.v_b).view(b, t, spec.num_key_value_heads, d)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q_start = cache.length if cache is not None else 0
        cache = cache.extend(k, v) if cache is not None else KVCache(k, v)
        window = spec.sliding_window if spec.is_sliding(layer) else None
        o = self.attention_fn(q, cache.k, cache.v, w.sinks, sm_scale=d**-0.5, sliding_window=window,
                              q_start=q_start)
        return F.linear(o.reshape(b, t, spec.q_dim), w.o_w, w.o_b), cache

    def __call__(self, ids: torch.Tensor, cache=None):
        spec, eps = self.spec, self.spec.rms_norm_eps
        q_start = cache[0].length if cache is not None else 0
        x = self.embed[ids].float()
        rope = rope_tables(spec, q_start, ids.shape[1], torch.float32)
        new_cache = []
        for i, lw in enumerate(self.layers):
            a, c = self._attention(rms_norm(x, lw.input_norm, eps), lw.attn, i, rope,
                                   cache[i] if cache is not None else None)
            x = x + a
            h = rms_norm(x, lw.post_norm, eps).reshape(-1, spec.hidden_size)
            m = self.moe_fn(h, lw.router, lw.experts, spec.num_experts_per_tok, spec.swiglu_limit,
                            spec.swiglu_alpha)
            x = x + m.view_as(x)
            new_cache.append(c)
        return F.linear(rms_norm(x, self.head.norm, eps), self.head.lm_head).float(), tuple(new_cache)


def triton_moe(x, router, experts, top_k, limit, alpha):
    from plugins.moe.fused import fused_moe

    logits = F.linear(x, router.weight.to(x.dtype), router.bias.to(x.dtype))
    return fused_moe(x, logits, MoeTensors.from_weights(experts), top_k, limit, alpha)


def triton_attention(q, k, v, sinks, **kw):
    from plugins.attention.fused import attention

    return attention(q, k, v, sinks, **kw)


def prefill_and_decode(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Logits of a prefill of all but the last two tokens, then one decode step per token."""
    n = ids.shape[1]
    logits, cache = model(ids[:, :n - 2])
    out = [logits]
    for t in (n - 2, n - 1):
        logits, cache = model(ids[:, t:t + 1], cache)
        out.append(logits)
    return out


def token_ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))  # window is 8


@pytest.mark.parametrize("fixture", ["tiny_mxfp4", "tiny_nvfp4", "tiny_bf16"])
def test_model_with_ops_gives_the_reference_logits(fixture, request):
    folder = request.getfixturevalue(fixture)
    rt = GptOssRuntime.open(folder)
    ids = token_ids(rt.spec.vocab_size)
    ours = prefill_and_decode(PluginForward(folder, ops.moe, ops.attention), ids)
    theirs = prefill_and_decode(rt.forward, ids)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


def test_model_with_triton_kernels_matches_the_reference(tiny_nvfp4):
    """The NVFP4 checkpoint the converter writes, its MoE and attention run by the Triton kernels."""
    pytest.importorskip("triton")
    rt = GptOssRuntime.open(tiny_nvfp4)
    ids = token_ids(rt.spec.vocab_size)
    ours = prefill_and_decode(PluginForward(tiny_nvfp4, triton_moe, triton_attention), ids)
    theirs = prefill_and_decode(rt.forward, ids)
    for a, b in zip(ours, theirs, strict=True):
        err = ((a - b).abs().max() / b.abs().max()).item()
        assert err <= MODEL_TOL, f"max |Δlogit| / max |logit| = {err:.2e} > {MODEL_TOL}"
