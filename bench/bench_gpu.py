"""`make bench-gpu`: the plugin kernels on an NVIDIA GPU (H100/H200), every figure of BENCHMARKS.md
"Issue 6" measured in one process, each against a ceiling or baseline measured in the same run.

  ceilings   device-to-device copy bandwidth (bytes read + written) and a large BF16 torch.matmul rate
  check      each kernel against its plain-torch reference on this GPU (relative L2 error vs a float32
             reference on the same bf16-rounded inputs; float32 kernels vs the float32 reference), every MoE
             storage (frag too, where the Gluon kernel runs), and TrtkitMoE as TensorRT-LLM builds it
  moe        decode MoE (NVFP4 weights stored K-major, spread and/or frag, --storage; BF16 activations), batch
             1/8/32/128, gpt-oss-120b and -20b layer shapes: weight bytes of the experts actually routed to
             / time, as a fraction of the copy bandwidth; speed-up over "dequantize to BF16 then torch
             matmul" (the plugins.moe reference on the GPU); plus the checkpoint's N-major storage
  gate-up-split  frag storage: the gate_up projection split over K at batch 1-8, by fused.FRAG_GATE_UP_FILL
  route      the routing-and-sorting program alone, by its warps
  access     the MoE GEMM's weight reads alone, as stored row by row vs each K step's tile contiguous
  parts      the spread GEMM's K loop part by part (reads, + activation tiles, + decode, whole step)
  attention  prefill 4k/32k (full causal and 128-band layers): TFLOP/s vs the matmul rate and time vs
             PyTorch SDPA (causal, no sinks, K/V expanded to all heads); decode: KV bytes / time
             as a fraction of the copy bandwidth

Timing: CUDA events, median of repeats after warm-up; decode figures replay a CUDA graph of several
layers (distinct weights / caches per layer, so the L2 cache does not serve the weights). MoE tile sizes
are swept briefly first (unless --no-sweep) and each row reports its fastest config (all printed). Writes
a table and, with --out, JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.attention import fused as attn_fused  # noqa: E402
from plugins.attention.reference import attention as attention_ref  # noqa: E402
from plugins.moe import fused as moe_fused  # noqa: E402
from plugins.moe.experts import Bf16Experts, ExpertWeights  # noqa: E402
from plugins.moe.tensors import (  # noqa: E402
    MoeTensors,
    ProjectionTensors,
    WeightFormat,
    reference_moe_from_logits,
)
from plugins.moe.triton_spread import _spread_acts, _spread_decode, _spread_step, _spread_tiles  # noqa: E402

DEV = torch.device("cuda")
SHAPES = {"gpt-oss-120b": 128, "gpt-oss-20b": 32}  # experts; both H = I = 2880, top-4
HIDDEN = INTER = 2880
TOP_K = 4


# ---- timing ------------------------------------------------------------------------------------
def gluon_available() -> bool:
    """Whether the Gluon MoE kernel (nvfp4_frag storage) runs on this GPU and Triton."""
    try:
        from plugins.moe import gluon_frag
    except ImportError:
        return False
    return gluon_frag.available(DEV)


def time_ms(fn, reps: int = 50, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def graph_ms(fn, reps: int = 50) -> float:
    """Median time of one replay of a CUDA graph of fn (warmed up on a side stream first)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return time_ms(g.replay, reps=reps, warmup=3)


def _copy_ms(n: int) -> float:
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    return time_ms(lambda: dst.copy_(src), reps=20)


def _matmul_ms(m: int) -> float:
    a = torch.randn(m, m, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(m, m, device=DEV, dtype=torch.bfloat16)
    return time_ms(lambda: a @ b, reps=20)


def ceilings() -> dict:
    n, m = 1 << 30, 8192  # 1 GiB copied each way; 8192^3 BF16 matmul
    return {"copy_gb_s": 2 * n / _copy_ms(n) / 1e6, "bf16_matmul_tflops": 2 * m**3 / _matmul_ms(m) / 1e9}


# ---- data --------------------------------------------------------------------------------------
def random_nvfp4(e: int, n_in: int, n_out: int, g: torch.Generator, k_major: bool) -> ProjectionTensors:
    """Logical [E, in/2, out] (the checkpoint's); stored input-fastest when k_major (see
    ProjectionTensors.k_major), else as the checkpoint stores it."""
    if k_major:
        packed = torch.randint(0, 256, (e, n_out, n_in // 2), dtype=torch.uint8, device=DEV, generator=g).mT
        scale = (torch.rand(e, n_out, n_in // 16, device=DEV, generator=g) * 3 + 0.5).to(torch.float8_e4m3fn).mT
    else:
        packed = torch.randint(0, 256, (e, n_in // 2, n_out), dtype=torch.uint8, device=DEV, generator=g)
        scale = (torch.rand(e, n_in // 16, n_out, device=DEV, generator=g) * 3 + 0.5).to(torch.float8_e4m3fn)
    return ProjectionTensors(WeightFormat.NVFP4, packed, scale, torch.tensor(0.02, device=DEV))


def random_mxfp4(e: int, n_in: int, n_out: int, g: torch.Generator) -> ProjectionTensors:
    blocks = torch.randint(0, 256, (e, n_out, n_in // 32, 16), dtype=torch.uint8, device=DEV, generator=g)
    scales = torch.randint(118, 124, (e, n_out, n_in // 32), dtype=torch.uint8, device=DEV, generator=g)
    return ProjectionTensors(WeightFormat.MXFP4, blocks, scales)


def random_layer(e: int, h: int, i: int, fmt: str, g: torch.Generator) -> MoeTensors:
    """fmt: bf16 | mxfp4 | nvfp4 (K-major storage) | nvfp4-nmajor (the checkpoint's storage) | nvfp4-spread
    (the kernel's own storage: `k_major(spread=True)`)."""
    if fmt == "bf16":
        w1 = torch.randn(e, h, 2 * i, device=DEV, generator=g) * h**-0.5
        w2 = torch.randn(e, i, h, device=DEV, generator=g) * i**-0.5
        gu, dn = ProjectionTensors(WeightFormat.BF16, w1), ProjectionTensors(WeightFormat.BF16, w2)
    elif fmt == "mxfp4":
        gu, dn = random_mxfp4(e, h, 2 * i, g), random_mxfp4(e, i, h, g)
    else:
        k_major = fmt in ("nvfp4", "nvfp4-spread")
        gu, dn = random_nvfp4(e, h, 2 * i, g, k_major), random_nvfp4(e, i, h, g, k_major)
    b1 = torch.randn(e, 2 * i, device=DEV, generator=g).to(torch.bfloat16)
    b2 = torch.randn(e, h, device=DEV, generator=g).to(torch.bfloat16)
    t = MoeTensors(gu, b1, dn, b2)
    if fmt == "nvfp4-spread":
        return t.k_major(spread=True)
    return t.k_major() if fmt in ("nvfp4", "mxfp4") else t  # 16-byte aligned rows, as served


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm())


# ---- correctness on the GPU ----------------------------------------------------------------------
def truth_experts(t: MoeTensors, dtype: torch.dtype) -> ExpertWeights:
    """The reference experts with weights decoded to `dtype` then held in float32 (what the kernel's
    dot sees), biases rounded the same way."""
    w = t.to_weights()
    dec = [torch.stack([p.expert(e, dtype) for e in range(p.num_experts)]).float() for p in (w.gate_up, w.down)]
    return ExpertWeights(Bf16Experts(dec[0]), t.gate_up_bias.to(dtype).float(), Bf16Experts(dec[1]),
                         t.down_bias.to(dtype).float())


def check_moe(g: torch.Generator, tokens=(1, 64, 300), configs=None, spread_configs=None,
              layer=(16, 256, 192), formats=None) -> list[dict]:
    """Every MoE storage and config the timing uses against the reference (configs: CHECK_CONFIGS, plus
    spread_configs, SPREAD_EXTRA_CONFIGS, on the spread storage) on layers of (experts, H, I); a row's
    `bit_equal` says whether a decode that must give the same bits did (None: no such twin).
    tests/test_bench_gpu.py runs a few on CPU."""
    configs = CHECK_CONFIGS if configs is None else configs
    spread_configs = SPREAD_EXTRA_CONFIGS if spread_configs is None else spread_configs
    e, h, i = layer
    rows = []
    plain = random_layer(e, h, i, "nvfp4", g)
    frag = DEV.type == "cuda" and gluon_available()
    for fmt in formats or ("nvfp4", "nvfp4-spread", "nvfp4-nmajor", "mxfp4", "bf16") + (("nvfp4-frag",) if frag else ()):
        if fmt == "nvfp4":
            t = plain
        elif fmt == "nvfp4-spread":  # the same weights in the kernel's order (compared bit for bit below)
            t = plain.k_major(spread=True)
        elif fmt == "nvfp4-frag":    # the Gluon kernel's order (bf16 activations only)
            t = plain.k_major(frag=True)
        else:
            t = random_layer(e, h, i, fmt, g)
        cfgs = tuple(configs) + (tuple(spread_configs) if fmt == "nvfp4-spread" else ())  # every config timed
        if fmt == "nvfp4-frag":
            cfgs = (None, *FRAG_CONFIGS, moe_fused.PREFILL_CONFIG)
        for n, dtype, cfg in itertools.product(tokens, (torch.bfloat16, torch.float32), cfgs):
            if (cfg is not None or fmt == "nvfp4-frag") and dtype != torch.bfloat16:
                continue
            tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
            x = torch.randn(n, h, device=DEV, generator=g).to(dtype)
            logits = torch.randn(n, e, device=DEV, generator=g).to(dtype)
            case = f"{fmt} N={n} {str(dtype)[6:]}" + (f" bm={cfg.block_m} bn={cfg.block_n} warps={cfg.num_warps} "
                                                      f"bf16_scale={cfg.bf16_scale} swap_ab={cfg.swap_ab}" if cfg else "")
            try:
                out = moe_fused.fused_moe(x, logits, t, TOP_K, config=cfg)
            except Exception as exc:  # noqa: BLE001 - reported as a failed case; the other cases still run
                rows.append({"kernel": "moe", "case": case, "rel_err": float("inf"), "tol": tol, "bit_equal": None,
                             "ok": False, "error": repr(exc)[:2000]})
                continue
            ref = reference_moe_from_logits(x.float(), logits.float(), truth_experts(t, dtype), TOP_K,
                                            7.0, 1.702)
            err = rel_err(out, ref)
            # spread storage, swap_ab (wgmma on sm_90, the decode default): the same bits as bf16_scale on the
            # plain storage in 128-input steps. The decodes agree bit for bit everywhere, but the tensor cores'
            # float32 sums do not: with mma.sync (no swap_ab), or plain 64-input steps, an H100 rounded some
            # outputs differently (2026-11-23), so those have no twin (None).
            c = cfg or moe_fused.default_config(n * TOP_K, e, x.device, fmt == "nvfp4-spread")
            twin = dataclasses.replace(c, bf16_scale=True, block_k=128) \
                if fmt == "nvfp4-spread" and dtype == torch.bfloat16 and c.swap_ab else None
            same = torch.equal(out, moe_fused.fused_moe(x, logits, plain, TOP_K, config=twin)) if twin else None
            rows.append({"kernel": "moe", "case": case, "rel_err": err, "tol": tol, "bit_equal": same,
                         "ok": err <= tol and same is not False})
    return rows


def check_module(g: torch.Generator, layer=(8, 2880, 2880), tokens=(1, 32)) -> list[dict]:
    """`TrtkitMoE` as TensorRT-LLM builds it (storage left to it: frag on Hopper) on CUDA, loaded from random
    checkpoint tensors in the Model Optimizer layout, against the reference MoE over those same tensors."""
    from plugins.moe_layer import TrtkitMoE

    e, h, i = layer
    w = {}
    for name, (n_in, n_out) in {"gate_up_proj": (h, 2 * i), "down_proj": (i, h)}.items():
        w[name] = torch.randint(0, 256, (e, n_in // 2, n_out), dtype=torch.uint8, device=DEV, generator=g)
        w[name + "_weight_scale"] = (torch.rand(e, n_in // 16, n_out, device=DEV, generator=g) * 4 + 0.1
                                     ).to(torch.float8_e4m3fn)
        w[name + "_weight_scale_2"] = torch.tensor(0.003, device=DEV)
        w[name + "_bias"] = torch.randn(e, n_out, device=DEV, generator=g).to(torch.bfloat16)
    m = TrtkitMoE(e, h, i, TOP_K, 7.0, 1.702, device=DEV)
    m.load_weights([w])
    storage = m.tensors().gate_up.fmt.value

    def proj(name: str) -> ProjectionTensors:
        return ProjectionTensors(WeightFormat.NVFP4, w[name], w[name + "_weight_scale"], w[name + "_weight_scale_2"])

    plain = MoeTensors(proj("gate_up_proj"), w["gate_up_proj_bias"], proj("down_proj"), w["down_proj_bias"])
    rows = []
    for n in tokens:
        x = torch.randn(n, h, device=DEV, generator=g).to(torch.bfloat16)
        logits = torch.randn(n, e, device=DEV, generator=g).to(torch.bfloat16)
        out = m(x=x, router_logits=logits)
        ref = reference_moe_from_logits(x.float(), logits.float(), truth_experts(plain, torch.bfloat16), TOP_K,
                                        7.0, 1.702)
        err = rel_err(out, ref)
        rows.append({"kernel": "TrtkitMoE", "case": f"storage {storage} N={n} {e}x{h}x{i}", "rel_err": err,
                     "tol": 1e-2, "bit_equal": None, "ok": err <= 1e-2})
    return rows


def check_attention(g: torch.Generator) -> list[dict]:
    rows = []
    cases = [  # (B, T, S, q_start, window)
        (2, 1000, 1000, 0, None), (2, 1000, 1000, 0, 128), (1, 300, 1300, 1000, 128),
        (4, 1, 3000, 2999, None), (4, 1, 3000, 2999, 128), (3, 4, 3000, 2996, None)]
    for b, t, s, q0, w in cases:
        for dtype, tol in ((torch.bfloat16, 1e-2), (torch.float32, 1e-5)):
            q = torch.randn(b, t, 64, 64, device=DEV, generator=g).to(dtype)
            k = torch.randn(b, s, 8, 64, device=DEV, generator=g).to(dtype)
            v = torch.randn(b, s, 8, 64, device=DEV, generator=g).to(dtype)
            sinks = torch.randn(64, device=DEV, generator=g)
            out = attn_fused.attention(q, k, v, sinks, sm_scale=0.125, sliding_window=w, q_start=q0)
            ref = attention_ref(q.float(), k.float(), v.float(), sinks, sm_scale=0.125, sliding_window=w,
                                q_start=q0)
            err = rel_err(out, ref)
            rows.append({"kernel": "attention", "case": f"B={b} T={t} S={s} W={w} {str(dtype)[6:]}",
                         "rel_err": err, "tol": tol, "ok": err <= tol})
    return rows


# ---- MoE decode ----------------------------------------------------------------------------------
def _run_layers(x, logits, layers, cfg):
    return [moe_fused.fused_moe(x, lg, t, TOP_K, config=cfg) for t, lg in zip(layers, logits, strict=True)]


def _run_reference(x, logits, ref_layers):
    return [reference_moe_from_logits(x, lg, w, TOP_K, 7.0, 1.702)
            for w, lg in zip(ref_layers, logits, strict=True)]


MOE_CANDIDATES = [moe_fused.MoeConfig(16, bn, bk, w, st, split_k=sk, asm_decode=asm, bf16_scale=b16)
                  for bn, bk, w, st, sk, asm, b16 in (
                      (64, 128, 4, 4, None, True, True), (32, 256, 4, 4, None, True, True),
                      (128, 128, 4, 4, None, True, True), (128, 64, 4, 6, None, True, True),
                      (64, 128, 4, 4, 4, True, True), (64, 256, 4, 3, None, True, True),
                      (64, 128, 4, 4, None, True, False), (32, 256, 4, 4, None, True, False),
                      (64, 128, 4, 4, None, False, False))]
# the weight tile as the wide (M) operand of the tensor-core instruction (wgmma on sm_90), tokens narrow
# (swap_ab), and/or more split-K programs in the down projection at small batch (split_fill)
SWAP_CANDIDATES = [moe_fused.MoeConfig(16, bn, bk, w, st, bf16_scale=b16, swap_ab=True, split_fill=fill)
                   for bn, bk, w, st, b16, fill in (
                       (64, 128, 4, 4, True, 2), (128, 64, 4, 6, True, 2), (64, 128, 4, 4, False, 2),
                       (64, 128, 4, 4, True, 8), (128, 64, 4, 6, True, 8), (64, 128, 4, 5, True, 8),
                       (64, 64, 4, 8, True, 8), (64, 128, 4, 4, True, 16), (64, 256, 4, 4, True, 8))]
# timed on every row besides the sweep's picks: 32 rows per expert block (one weight pass per expert
# where ~16 pairs hit each expert, e.g. gpt-oss-20b at batch 128)
ROW_EXTRA_CONFIGS = (moe_fused.MoeConfig(32, 64, 128, 4, 4, bf16_scale=True, swap_ab=True, split_fill=8),)
# timed on the spread-storage rows besides those (its K step is always one 128-input chunk, and its
# shorter K loop may prefer wider tiles or a deeper pipeline than the K-major storage's sweep picked)
# (128 columns with 8 warps or 3 stages, and the gate_up projection split over K, were slower everywhere on
# an H100: BENCHMARKS.md)
SPREAD_EXTRA_CONFIGS = tuple(moe_fused.MoeConfig(16, bn, 128, 4, st, bf16_scale=True, swap_ab=True, split_fill=fill)
                             for bn, st, fill in ((128, 4, 8), (64, 6, 8), (64, 3, 8), (64, 2, 8), (64, 4, 16)))
# the configs of the previous published MoE decode table (BENCHMARKS.md issue 6), timed on every row
PREV_CONFIGS = (moe_fused.MoeConfig(16, 32, 256, 4, 4), moe_fused.MoeConfig(16, 128, 64, 4, 6, bf16_scale=True))
CHECK_CONFIGS = (None, moe_fused.MoeConfig(16, 64, 128, 4, 4, bf16_scale=True),
                 moe_fused.MoeConfig(16, 64, 128, 4, 4, swap_ab=True),
                 moe_fused.MoeConfig(16, 128, 64, 4, 6, bf16_scale=True, swap_ab=True),
                 moe_fused.MoeConfig(32, 64, 128, 4, 4, bf16_scale=True, swap_ab=True, split_fill=8))
# the Gluon kernel on nvfp4_frag storage (`plugins.moe.gluon_frag`: 64-row tiles, 128-input steps; block_m and
# the cp.async depth are its only knobs), checked and timed beside the Triton configs
FRAG_CONFIGS = tuple(moe_fused.MoeConfig(bm, 64, 128, 4, st, swap_ab=True, split_fill=fill)
                     for bm, st, fill in ((16, 4, 8), (16, 3, 8), (16, 6, 8), (32, 4, 8), (16, 4, 16)))
QUICK = False  # --quick: sweep PREV_CONFIGS + SWAP_CANDIDATES only
SWEEP = True   # --no-sweep: the rows time DECODE_CONFIG and the fixed configs only


def moe_sweep(layers: list[MoeTensors], batch: int, g: torch.Generator) -> moe_fused.MoeConfig:
    """Fastest decode tile config at this batch size over the given layers (CUDA-graph time)."""
    x = torch.randn(batch, HIDDEN, device=DEV, generator=g).to(torch.bfloat16)
    logits = [torch.randn(batch, layers[0].gate_up.num_experts, device=DEV, generator=g) for _ in layers]
    best = None
    cands = list(PREV_CONFIGS) + SWAP_CANDIDATES if QUICK else MOE_CANDIDATES + SWAP_CANDIDATES
    for cfg in cands:
        ms = graph_ms(partial(_run_layers, x, logits, layers, cfg), reps=20)
        print(f"  moe batch {batch} {cfg}: {ms / len(layers) * 1e3:.1f} us/layer", flush=True)
        if best is None or ms < best[0]:
            best = (ms, cfg)
    return best[1]


def moe_row(shape: str, layers: list[MoeTensors], n: int, cfgs, copy_gb_s: float, g, baseline: bool = True,
            extra: tuple = (), prev: bool = True) -> dict:
    e = layers[0].gate_up.num_experts
    x = torch.randn(n, HIDDEN, device=DEV, generator=g).to(torch.bfloat16)
    logits = [torch.randn(n, e, device=DEV, generator=g) for _ in layers]
    active = statistics.mean(len(torch.topk(lg, TOP_K).indices.unique()) for lg in logits)
    fixed = list(PREV_CONFIGS) + list(ROW_EXTRA_CONFIGS) if prev else []  # (the Triton configs)
    both = list(dict.fromkeys(list(cfgs) + fixed + list(extra)))
    timed = {}
    for c in both:  # a config that fails (say, to compile) is reported and skipped: the run goes on
        try:
            timed[c] = graph_ms(partial(_run_layers, x, logits, layers, c)) / len(layers)
        except Exception as exc:  # noqa: BLE001
            print(f"  moe row {shape} batch {n}: {c} failed: {exc!r}"[:2000], flush=True)
    if not timed:
        raise RuntimeError(f"moe row {shape} batch {n}: every config failed (printed above)")
    cfg = min(timed, key=timed.get)
    ours = timed[cfg]
    print(f"  moe row {shape} batch {n}: " + ", ".join(f"{t * 1e3:.1f} us {c}" for c, t in timed.items()),
          flush=True)
    prev = min(timed.get(c, float("inf")) for c in PREV_CONFIGS) if prev else float("nan")
    eager = time_ms(partial(_run_layers, x, logits, layers, cfg), reps=20) / len(layers)
    base = time_ms(partial(_run_reference, x, logits, [t.to_weights() for t in layers]), reps=5,
                   warmup=1) / len(layers) if baseline else float("nan")
    per_expert = (layers[0].gate_up.nbytes + layers[0].down.nbytes) / e
    gb_s = active * per_expert / ours / 1e6
    return {"shape": shape, "batch": n, "active_experts": round(active, 1),
            "weight_mb": round(active * per_expert / 1e6, 1), "us_graph": round(ours * 1e3, 1),
            "us_eager": round(eager * 1e3, 1), "weight_gb_s": round(gb_s),
            "frac_copy_bw": round(gb_s / copy_gb_s, 3), "us_graph_prev_configs": round(prev * 1e3, 1),
            "frac_copy_bw_prev_configs": round(active * per_expert / prev / 1e6 / copy_gb_s, 3),
            "us_dequant_baseline": round(base * 1e3) if baseline else None,
            "speedup_vs_baseline": round(base / eager, 1) if baseline else None,
            "config": str(moe_fused.config_for(cfg, layers[0]))}


def kernel_breakdown(layers: list[MoeTensors], n: int, cfg, g: torch.Generator, calls: int = 10) -> dict:
    """GPU time per layer of each kernel of fused_moe (torch.profiler over eager calls), in us: where a
    decode step's time goes (routing, the two GEMMs, combine, memsets)."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(n, HIDDEN, device=DEV, generator=g).to(torch.bfloat16)
    logits = [torch.randn(n, layers[0].gate_up.num_experts, device=DEV, generator=g) for _ in layers]
    _run_layers(x, logits, layers, cfg)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            _run_layers(x, logits, layers, cfg)
        torch.cuda.synchronize()
    per_layer = calls * len(layers)
    out = {}
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if us > 0:
            out[ev.key] = round(us / per_layer, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def bench_moe(copy_gb_s: float, g: torch.Generator, results: dict, save, storages: list[str]) -> None:
    """Fills results (rows, spread_rows, nmajor_rows, config, kernel_us_per_layer), saving after each row.
    storages: kmajor (`k_major()`, with the sweep and the dequantize baseline) and/or spread
    (`k_major(spread=True)`: the same weights in the kernel's order, timed with the same configs)."""
    results.setdefault("rows", [])
    cfgs: list = []
    for shape, e in SHAPES.items():
        n_layers = 2 if e == 128 else 6  # > 2.5 GB of distinct weights per replay
        layers = [random_layer(e, HIDDEN, INTER, "nvfp4", g) for _ in range(n_layers)]
        if not cfgs:  # swept once, on the 120b layers: one small and one larger decode batch
            cfgs = list(dict.fromkeys([moe_sweep(layers, 1, g), moe_sweep(layers, 32, g)] if SWEEP
                                      else [moe_fused.DECODE_CONFIG]))
            try:  # diagnostics only: a profiler problem must not cost the run
                results["kernel_us_per_layer"] = {n: kernel_breakdown(layers, n, cfgs[0], g) for n in (1, 32)}
            except Exception as exc:  # noqa: BLE001
                results["kernel_us_per_layer"] = f"profiler failed: {exc!r}"
            print(f"  moe kernels (us per layer, {shape}) {results['kernel_us_per_layer']}", flush=True)
        for n in (1, 8, 32, 128) if "kmajor" in storages else ():
            row = moe_row(shape, layers, n, cfgs, copy_gb_s, g)
            results["rows"].append(row)
            print(f"  moe {row}", flush=True)
            save()
        spread = [t.k_major(spread=True) for t in layers] if "spread" in storages else []
        if spread and shape == "gpt-oss-120b":  # diagnostics only, as above
            try:
                results["spread_kernel_us_per_layer"] = {n: kernel_breakdown(spread, n, cfgs[0], g) for n in (1, 32)}
            except Exception as exc:  # noqa: BLE001
                results["spread_kernel_us_per_layer"] = f"profiler failed: {exc!r}"
            print(f"  moe kernels, spread storage (us per layer) {results['spread_kernel_us_per_layer']}", flush=True)
        for n in (1, 8, 32, 128) if spread else ():  # same weights in the kernel's order; same baseline
            row = {**moe_row(shape, spread, n, cfgs, copy_gb_s, g, baseline=False, extra=SPREAD_EXTRA_CONFIGS),
                   "storage": "spread"}
            results.setdefault("spread_rows", []).append(row)
            print(f"  moe spread storage {row}", flush=True)
            save()
        spread.clear()
        frag = [t.k_major(frag=True) for t in layers] if "frag" in storages and gluon_available() else []
        if frag and shape == "gpt-oss-120b":  # diagnostics only, as above
            try:
                results["frag_kernel_us_per_layer"] = {n: kernel_breakdown(frag, n, moe_fused.DECODE_CONFIG, g)
                                                       for n in (1, 32)}
            except Exception as exc:  # noqa: BLE001
                results["frag_kernel_us_per_layer"] = f"profiler failed: {exc!r}"
            print(f"  moe kernels, frag storage (us per layer) {results['frag_kernel_us_per_layer']}", flush=True)
        for n in (1, 8, 32, 128) if frag else ():  # the Gluon kernel on the same weights
            row = {**moe_row(shape, frag, n, FRAG_CONFIGS, copy_gb_s, g, baseline=False, prev=False), "storage": "frag"}
            results.setdefault("frag_rows", []).append(row)
            print(f"  moe frag storage {row}", flush=True)
            save()
        frag.clear()
        if shape == "gpt-oss-120b" and "kmajor" in storages:  # the checkpoint's own (N-major) storage
            layers = [random_layer(e, HIDDEN, INTER, "nvfp4-nmajor", g) for _ in range(n_layers)]
            results["nmajor_rows"] = [moe_row(shape, layers, n, cfgs, copy_gb_s, g) for n in (1, 32)]
            print(f"  moe N-major storage {results['nmajor_rows']}", flush=True)
        layers.clear()
        torch.cuda.empty_cache()
    results["config"] = " / ".join(map(str, cfgs))


def bench_gate_up_split(copy_gb_s: float, g: torch.Generator, fills=(0, 4, 8, 16, 32)) -> list[dict]:
    """The frag storage's gate_up split over K at small batches, by `fused.FRAG_GATE_UP_FILL` (programs per SM
    it splits up to; 0: never): MoE rows (DECODE_CONFIG) at batch 1, 2, 4, 8 on both shapes, same run."""
    rows, default = [], moe_fused.FRAG_GATE_UP_FILL
    try:
        for shape, e in SHAPES.items():
            layers = [random_layer(e, HIDDEN, INTER, "nvfp4", g).k_major(frag=True) for _ in range(2 if e == 128 else 6)]
            for n, fill in itertools.product((1, 2, 4, 8), fills):
                moe_fused.FRAG_GATE_UP_FILL = fill
                row = moe_row(shape, layers, n, (moe_fused.DECODE_CONFIG,), copy_gb_s, g, baseline=False, prev=False)
                rows.append({**row, "gate_up_fill": fill})
                print(f"  gate-up split {shape} batch {n} fill {fill}: {row['us_graph']} us ({row['frac_copy_bw']})",
                      flush=True)
            layers.clear()
            torch.cuda.empty_cache()
    finally:
        moe_fused.FRAG_GATE_UP_FILL = default
    return rows


def bench_route(g: torch.Generator, calls: int = 20) -> list[dict]:
    """route_and_sort alone at decode batches (gpt-oss-120b's 128 experts, one program), by the warps of
    that program (`fused.ROUTE_WARPS` picks them by pairs): us per call, from a CUDA graph of `calls` calls."""
    rows, default = [], moe_fused.ROUTE_WARPS
    try:
        for n in (1, 8, 32):
            logits = torch.randn(n, 128, device=DEV, generator=g)
            for warps in (4, 8, 16):
                moe_fused.ROUTE_WARPS = ((moe_fused.FUSED_ROUTE_MAX_PAIRS, warps),)
                ms = graph_ms(lambda lg=logits: [moe_fused.route_and_sort(lg, TOP_K, 16) for _ in range(calls)])
                rows.append({"batch": n, "experts": 128, "warps": warps, "us": round(ms * 1e3 / calls, 2)})
                print(f"  route {rows[-1]}", flush=True)
    finally:
        moe_fused.ROUTE_WARPS = default
    return rows


@triton.jit
def _stream_kernel(w_ptr, out_ptr, steps, s_e, s_t, s_c, s_r, ROWS: tl.constexpr, BYTES: tl.constexpr):
    """Reads `steps` tiles of ROWS x BYTES bytes, tile c of program (e, t) at e*s_e + t*s_t + c*s_c, its rows
    s_r apart (the MoE GEMM's weight loads, without the decode), and stores their sum (so nothing is dropped)."""
    base = w_ptr + tl.program_id(0).to(tl.int64) * s_e + tl.program_id(1).to(tl.int64) * s_t
    tile = tl.arange(0, ROWS)[:, None] * s_r + tl.arange(0, BYTES)[None, :]
    acc = tl.zeros((ROWS, BYTES), tl.int32)
    for c in range(steps):
        acc += tl.load(base + c * s_c + tile).to(tl.int32)
    tl.store(out_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.sum(tl.sum(acc, 1), 0))


def bench_access(copy_gb_s: float) -> list[dict]:
    """The weight reads of the MoE GEMM alone, as a fraction of the copy rate: 128 experts x 90 programs,
    each 64 output rows x 1440 bytes (gpt-oss gate_up, K = 2880), read in 32-, 64- or 128-byte steps along
    the rows as stored now (rows 1440 bytes apart), or with each step's tile contiguous (the rows of a
    tile one after another, a program's tiles one after another); 4 or 8 tiles in flight (num_stages)."""
    e, n, row_bytes, rows = 128, 5760, 1440, 64
    w = torch.randint(0, 255, (e * n * row_bytes,), dtype=torch.uint8, device=DEV)
    out = torch.empty(e * (n // rows), dtype=torch.int32, device=DEV)
    res = []
    for step, stages in itertools.product((64, 128, 32), (4, 8)):
        steps = row_bytes // step  # 1440 = 22.5 x 64: the last 32 bytes of each row are not read at 64
        layouts = {"rows (as stored)": (n * row_bytes, rows * row_bytes, step, row_bytes),
                   "tile-contiguous": (n * row_bytes, rows * row_bytes, rows * step, step)}
        for name, (s_e, s_t, s_c, s_r) in layouts.items():
            def run(s_e=s_e, s_t=s_t, s_c=s_c, s_r=s_r, steps=steps, step=step, stages=stages):
                _stream_kernel[(e, n // rows)](w, out, steps, s_e, s_t, s_c, s_r, ROWS=rows, BYTES=step,
                                               num_warps=4, num_stages=stages)
            ms = time_ms(run, reps=20)
            gb_s = e * n * steps * step / ms / 1e6
            res.append({"layout": name, "step_bytes": step, "stages": stages, "us": round(ms * 1e3, 1),
                        "gb_s": round(gb_s), "frac_copy_bw": round(gb_s / copy_gb_s, 3)})
            print(f"  access {res[-1]}", flush=True)
    return res


@triton.jit
def _parts_kernel(w_ptr, s_ptr, x_ptr, out_ptr, K, N, stride_we, stride_se, stride_x, gs, valid_rows,
                  ACT: tl.constexpr, DECODE: tl.constexpr, WHOLE: tl.constexpr, ASM: tl.constexpr):
    """The spread GEMM's K loop over its full 128-input chunks (program (expert, 64 output rows), 16 token
    rows of which `valid_rows` are real, gate_up-like, `swap_ab` dots), built up part by part: every variant
    loads the weight and scale tiles and runs the two dots a step (so Triton pipelines the loads as in the
    GEMM); ACT loads the two activation tiles (else a constant stands in); DECODE runs the spread decode
    (else the code bytes are only scaled by a scale byte and cast); WHOLE is `_spread_step` itself."""
    BN: tl.constexpr = 64
    H: tl.constexpr = 64
    e = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    w_base, s_base = w_ptr + e * stride_we, s_ptr + e * stride_se
    rows = tl.arange(0, 16)
    valid = rows < valid_rows
    a_base = x_ptr + rows[:, None] * stride_x
    acc = tl.zeros((BN, 16), tl.float32)
    for k0 in range(0, K // 128 * 128, 128):
        if WHOLE:
            acc = _spread_step(acc, a_base, valid, w_base, s_base, n, k0, N, gs, BN, 128, tl.bfloat16, tl.bfloat16,
                               "tf32", ASM, True)
        else:
            code, s_lo, s_hi = _spread_tiles(w_base, s_base, n, k0, N, BN, 128)
            if DECODE:
                lo, hi = _spread_decode(code, s_lo, s_hi, gs, BN, H, tl.bfloat16, ASM)
            else:
                s_max = tl.maximum(tl.max(s_lo, 1), tl.max(s_hi, 1)).to(tl.float32)
                lo = (code.to(tl.float32) * s_max[:, None]).to(tl.bfloat16)
                hi = lo
            if ACT:
                a_lo, a_hi = _spread_acts(a_base, valid, k0, 128)
            else:
                a_lo = tl.full((16, H), 1.0, tl.bfloat16)
                a_hi = a_lo
            acc = tl.dot(lo, tl.trans(a_lo), acc, input_precision="tf32")
            acc = tl.dot(hi, tl.trans(a_hi), acc, input_precision="tf32")
    tl.store(out_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.sum(tl.sum(acc, 1), 0))


PARTS = {"weight loads + dots": (False, False, False), "+ activation tiles": (True, False, False),
         "+ decode": (False, True, False), "+ activation tiles + decode": (True, True, False),
         "_spread_step (the GEMM's K step)": (True, True, True)}


def bench_parts(copy_gb_s: float, g: torch.Generator, valid_rows: int = 2) -> list[dict]:
    """Where the spread GEMM's time goes: `_parts_kernel` over gpt-oss-120b's gate_up (128 experts x 90
    programs, spread storage), its weight bytes / time as a fraction of the copy rate, part by part."""
    t = random_layer(128, HIDDEN, INTER, "nvfp4-spread", g).gate_up
    e, k, n = t.num_experts, t.in_features, t.out_features
    w, s = t.weight, t.scale.view(torch.uint8)
    x = torch.randn(16, k, device=DEV, generator=g).to(torch.bfloat16)
    out = torch.empty(e * (n // 64), dtype=torch.float32, device=DEV)
    nbytes = e * n * (k // 128 * 128) * (1 / 2 + 1 / 16)
    res = []
    for name, (act, decode, whole) in PARTS.items():
        def run(act=act, decode=decode, whole=whole):
            _parts_kernel[(e, n // 64)](w, s, x, out, k, n, w.stride(0), s.stride(0), x.stride(0), 1.5, valid_rows,
                                        ACT=act, DECODE=decode, WHOLE=whole, ASM=DEV.type == "cuda", num_warps=4,
                                        num_stages=3)
        ms = time_ms(run, reps=20)
        gb_s = nbytes / ms / 1e6
        res.append({"parts": name, "us": round(ms * 1e3, 1), "gb_s": round(gb_s),
                    "frac_copy_bw": round(gb_s / copy_gb_s, 3)})
        print(f"  parts {res[-1]}", flush=True)
    return res


# ---- attention -----------------------------------------------------------------------------------
def visible_pairs(t: int, window: int | None) -> int:
    return sum(min(p + 1, window) if window else p + 1 for p in range(t))


def attn_sweep(g: torch.Generator) -> attn_fused.AttentionConfig:
    q = torch.randn(1, 4096, 64, 64, device=DEV, generator=g).to(torch.bfloat16)
    k = torch.randn(1, 4096, 8, 64, device=DEV, generator=g).to(torch.bfloat16)
    v = torch.randn(1, 4096, 8, 64, device=DEV, generator=g).to(torch.bfloat16)
    sinks = torch.randn(64, device=DEV, generator=g)
    best = None
    for bm, bn, w, st in ((128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 8, 2),
                          (128, 128, 8, 3), (64, 64, 4, 3), (64, 64, 4, 4), (64, 128, 4, 3)):
        cfg = attn_fused.AttentionConfig(bm, bn, w, st)
        try:
            ms = time_ms(partial(attn_fused.attention_prefill, q, k, v, sinks, sm_scale=0.125,
                                 sliding_window=None, q_start=0, config=cfg), reps=20)
        except Exception as exc:  # noqa: BLE001 - a config that does not fit (shared memory) is skipped
            print(f"  attention config {cfg}: failed ({type(exc).__name__})", flush=True)
            continue
        print(f"  attention config {cfg}: {ms:.3f} ms", flush=True)
        if best is None or ms < best[0]:
            best = (ms, cfg)
    return best[1]


def prefill_rows(t: int, cfg, mm_tflops: float, g) -> list[dict]:
    """Ours (with sinks, full or 128-band) and SDPA (causal, no sinks) timed alternately, 3 rounds,
    the median of each."""
    q = torch.randn(1, t, 64, 64, device=DEV, generator=g).to(torch.bfloat16)
    k = torch.randn(1, t, 8, 64, device=DEV, generator=g).to(torch.bfloat16)
    v = torch.randn(1, t, 8, 64, device=DEV, generator=g).to(torch.bfloat16)
    sinks = torch.randn(64, device=DEV, generator=g)
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k.repeat_interleave(8, 2), v.repeat_interleave(8, 2)))
    sdpa_fn = partial(F.scaled_dot_product_attention, qh, kh, vh, is_causal=True)
    rows = []
    for window in (None, 128):
        ours_fn = partial(attn_fused.attention_prefill, q, k, v, sinks, sm_scale=0.125,
                          sliding_window=window, q_start=0, config=cfg)
        ours, sdpa = [], []
        for _ in range(3):
            sdpa.append(time_ms(sdpa_fn, reps=10))
            ours.append(time_ms(ours_fn, reps=10))
        ms, sdpa_ms = statistics.median(ours), statistics.median(sdpa)
        tflops = 4 * 64 * 64 * visible_pairs(t, window) / ms / 1e9
        rows.append({"tokens": t, "window": window, "ms": round(ms, 3), "tflops": round(tflops, 1),
                     "frac_matmul": round(tflops / mm_tflops, 3), "sdpa_causal_ms": round(sdpa_ms, 3),
                     "speed_vs_sdpa": round(sdpa_ms / ms, 2)})
    return rows


def _decode_layers(q, caches, sinks, window, ctx):
    return [attn_fused.attention(q, k, v, sinks, sm_scale=0.125, sliding_window=window, q_start=ctx - 1)
            for k, v in caches]


def decode_rows(batch: int, ctx: int, copy_gb_s: float, g) -> list[dict]:
    n_layers = 4
    caches = [(torch.randn(batch, ctx, 8, 64, device=DEV, generator=g).to(torch.bfloat16),
               torch.randn(batch, ctx, 8, 64, device=DEV, generator=g).to(torch.bfloat16))
              for _ in range(n_layers)]
    q = torch.randn(batch, 1, 64, 64, device=DEV, generator=g).to(torch.bfloat16)
    sinks = torch.randn(64, device=DEV, generator=g)
    rows = []
    for window in (None, 128):
        ms = graph_ms(partial(_decode_layers, q, caches, sinks, window, ctx)) / n_layers
        gb_s = batch * min(ctx, window or ctx) * 8 * 64 * 2 * 2 / ms / 1e6
        rows.append({"batch": batch, "context": ctx, "window": window, "us": round(ms * 1e3, 1),
                     "kv_gb_s": round(gb_s), "frac_copy_bw": round(gb_s / copy_gb_s, 3)})
    return rows


def bench_attention(mm_tflops: float, copy_gb_s: float, g: torch.Generator) -> dict:
    cfg = attn_sweep(g)
    res = {"config": str(cfg), "prefill": [], "decode": []}
    for t in (4096, 32768):
        for row in prefill_rows(t, cfg, mm_tflops, g):
            res["prefill"].append(row)
            print(f"  attention prefill {row}", flush=True)
    for batch, ctx in ((8, 4096), (8, 32768), (32, 8192)):
        for row in decode_rows(batch, ctx, copy_gb_s, g):
            res["decode"].append(row)
            print(f"  attention decode {row}", flush=True)
    return res


def machine() -> dict:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    import triton

    return {"gpu": smi, "torch": torch.__version__, "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%d")}


def print_tables(r: dict) -> None:
    c = r["ceilings"]
    print(f"\n== {r['machine']['gpu']} | copy {c['copy_gb_s']:.0f} GB/s | bf16 matmul "
          f"{c['bf16_matmul_tflops']:.0f} TFLOP/s")
    bad = [x for x in r["check"] if not x["ok"]]
    print(f"check: {len(r['check']) - len(bad)}/{len(r['check'])} within tolerance; worst "
          f"{max(x['rel_err'] / x['tol'] for x in r['check']):.2f} of tol" + (f"; FAILED {bad}" if bad else ""))
    print(f"MoE decode (NVFP4 W, BF16 A), configs {r['moe']['config']}")
    print("shape          batch  experts  MB     us(graph) us(eager)  GB/s  frac_copy  baseline_us  speedup")
    for m in r["moe"]["rows"]:
        print(f"{m['shape']:14s} {m['batch']:5d} {m['active_experts']:8.1f} {m['weight_mb']:6.1f} "
              f"{m['us_graph']:9.1f} {m['us_eager']:9.1f} {m['weight_gb_s']:6d} {m['frac_copy_bw']:9.3f} "
              f"{m['us_dequant_baseline']:12d} {m['speedup_vs_baseline']:7.1f}")
    for m in r["moe"].get("spread_rows", []) + r["moe"].get("frag_rows", []):
        print(f"{m['shape']:14s} {m['batch']:5d} {m['active_experts']:8.1f} {m['weight_mb']:6.1f} "
              f"{m['us_graph']:9.1f} {m['us_eager']:9.1f} {m['weight_gb_s']:6d} {m['frac_copy_bw']:9.3f}  "
              f"({m['storage']})")
    a = r["attention"]
    print(f"attention prefill (config {a['config']})")
    print("tokens  window  ms       TFLOP/s  frac_matmul  sdpa_ms  speed_vs_sdpa")
    for p in a["prefill"]:
        print(f"{p['tokens']:6d}  {str(p['window']):6s} {p['ms']:8.3f} {p['tflops']:8.1f} {p['frac_matmul']:11.3f} "
              f"{p['sdpa_causal_ms']:8.3f} {p['speed_vs_sdpa']:8.2f}")
    print("attention decode\nbatch  context  window  us       GB/s   frac_copy")
    for d in a["decode"]:
        print(f"{d['batch']:5d}  {d['context']:7d}  {str(d['window']):6s} {d['us']:8.1f} {d['kv_gb_s']:6d} "
              f"{d['frac_copy_bw']:9.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the results here as JSON")
    ap.add_argument("--only", default="check,moe,attention",
                    help="comma list of check, check-moe (MoE cases only), moe, gate-up-split, route, access, parts, "
                         "attention")
    ap.add_argument("--quick", action="store_true",
                    help="MoE sweep over the previous table's configs and the swap_ab ones only")
    ap.add_argument("--no-sweep", action="store_true",
                    help="MoE rows with the decode defaults and the fixed configs only (no tile sweep)")
    ap.add_argument("--storage", default="kmajor,spread,frag",
                    help="MoE expert storages to time: kmajor (k_major(), with the baseline), spread and/or frag "
                         "(the Gluon kernel, Hopper)")
    args = ap.parse_args()
    global QUICK, SWEEP
    QUICK, SWEEP = args.quick, not args.no_sweep
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (H100/H200); none is visible")
    g = torch.Generator(device=DEV).manual_seed(0)
    r = {"machine": machine(), "ceilings": ceilings()}
    print(f"[bench-gpu] {r['machine']} {r['ceilings']}", flush=True)
    todo = args.only.split(",")

    def save() -> None:  # after every stage: a run cut short by a time limit keeps what it measured
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(r, indent=1))

    r["check"] = (check_moe(g) + check_module(g) + check_attention(g)) if "check" in todo else []
    if "check-moe" in todo:
        r["check"] = check_moe(g) + check_module(g)
    for row in r["check"]:
        print(f"  check {row}", flush=True)
    save()
    if "moe" in todo:
        r["moe"] = {}
        bench_moe(r["ceilings"]["copy_gb_s"], g, r["moe"], save, args.storage.split(","))
        save()
    if "gate-up-split" in todo and gluon_available():
        r["gate_up_split"] = bench_gate_up_split(r["ceilings"]["copy_gb_s"], g)
        save()
    if "route" in todo:
        r["route"] = bench_route(g)
        save()
    if "access" in todo:
        r["access"] = bench_access(r["ceilings"]["copy_gb_s"])
        save()
    if "parts" in todo:
        r["parts"] = bench_parts(r["ceilings"]["copy_gb_s"], g)
        save()
    if "attention" in todo:
        r["attention"] = bench_attention(r["ceilings"]["bf16_matmul_tflops"], r["ceilings"]["copy_gb_s"], g)
        save()
    if all(k in r for k in ("moe", "attention")) and r["check"]:
        print_tables(r)
    elif "moe" in r:
        bad = [x for x in r["check"] if not x["ok"]]
        print(f"\ncheck: {len(r['check']) - len(bad)}/{len(r['check'])} ok" + (f"; FAILED {bad}" if bad else ""))
        print(f"MoE decode, configs {r['moe']['config']}; copy {r['ceilings']['copy_gb_s']:.0f} GB/s")
        for m in r["moe"].get("rows", []) + r["moe"].get("spread_rows", []) + r["moe"].get("frag_rows", []):
            print(f"{m.get('storage', 'kmajor'):7s} {m['shape']:14s} {m['batch']:4d} {m['active_experts']:6.1f} "
                  f"{m['weight_mb']:7.1f} MB "
                  f"graph {m['us_graph']:7.1f} us ({m['frac_copy_bw']:.3f}) prev cfgs {m['us_graph_prev_configs']:7.1f} "
                  f"us ({m['frac_copy_bw_prev_configs']:.3f}) eager {m['us_eager']:7.1f} base {m['us_dequant_baseline']} "
                  f"x{m['speedup_vs_baseline']} {m['config']}")


if __name__ == "__main__":
    main()
