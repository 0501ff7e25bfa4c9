"""Performance model: time of one in-flight-batching iteration from the bytes and FLOPs it moves.

One iteration of one rank runs `dec` decode tokens and `pre` prefill tokens through every layer. Each
component is a roofline (the slower of its memory stream at `mem` x HBM bandwidth and its FLOPs at
`gemm`/`moe` x peak); the components run one after another, so their times add, followed by the
collectives (TP all-reduce or attention-DP all-to-all over NVLink) and the fixed costs (per layer,
per iteration, per sequence). Efficiencies are calibrated per architecture (`recipes.calibration`).

The expert stream counts DISTINCT experts: T tokens with top-k routing over E experts touch
E * (1 - (1 - k/E)^T) of them in expectation (uniform routing), so small batches read few experts;
each touched expert's GEMM also costs a minimum time (`expert_us`: launch, pipeline fill, tail).
All functions accept numpy arrays for the token counts (the search evaluates a batch grid at once).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from builder.spec import ModelSpec
from recipes.calibration import Efficiency, efficiency
from recipes.hardware import Compute, GpuSpec, gpu
from recipes.layout import Layout
from recipes.memory import kv_bytes_per_token, kv_heads_per_rank, weight_bytes
from recipes.model import model_bytes, model_flops, resolve_model
from recipes.precision import BACKEND_SPEED, KvDtype, MoeBackend, QuantAlgo

BF16 = 2  # bytes


@dataclass(frozen=True)
class Term:
    """One roofline term: bytes moved, FLOPs done, and the rates they run at (bytes/s, FLOP/s)."""

    bytes: object
    flops: object
    bw: float
    peak: float
    scale: float = 1.0   # backend speed: time / scale
    extra_s: object = 0.0  # latency no roofline shows (per-expert GEMM minimum time)

    @property
    def memory_s(self):
        return self.bytes / self.bw / self.scale

    @property
    def compute_s(self):
        return self.flops / self.peak / self.scale

    @property
    def seconds(self):
        return np.maximum(self.memory_s, self.compute_s) + self.extra_s


class PerfModel:
    """Precomputed per-rank constants of one (model, GPU, layout); `iteration()` does the rest."""

    def __init__(self, spec: ModelSpec, gpu: GpuSpec, lay: Layout, eff: Efficiency | None = None):
        self.spec, self.gpu, self.lay = spec, gpu, lay
        self.eff = eff or efficiency(gpu.arch)
        b, f = model_bytes(spec, lay.quant_spec.expert_format), model_flops(spec)
        w = weight_bytes(spec, lay)
        self.layers = spec.num_hidden_layers
        self.n_slide = sum(1 for t in range(self.layers) if spec.is_sliding(t))
        self.n_full = self.layers - self.n_slide
        self.dense_w = w["attention"] + self.layers * b.replicated
        self.lm_w = b.lm_head / lay.attn_tp
        self.expert_w = b.expert_split / lay.moe_tp + b.expert_replicated  # one expert, this rank's part
        self.kv_tok = kv_bytes_per_token(spec, lay)                        # per layer
        self.heads = spec.num_attention_heads / lay.attn_tp
        self.kv_heads = kv_heads_per_rank(spec, lay)
        self.f = f
        self.bw = gpu.hbm_bytes_s * self.eff.mem
        self.bf16 = gpu.peak(Compute.BF16) * self.eff.gemm
        self.moe_peak = gpu.peak(lay.quant_spec.compute) * self.eff.moe
        self.moe_scale = BACKEND_SPEED[(gpu.arch, lay.moe_backend)]
        self.link = gpu.nvlink_bytes_s * self.eff.link

    # ---- components -----------------------------------------------------------------------------
    def dense(self, n) -> Term:
        """q/k/v/o projections + router for n tokens (weights BF16)."""
        s, lay = self.spec, self.lay
        act = n * self.layers * BF16 * (2 * s.hidden_size + 2 * (s.q_dim + s.kv_dim) / lay.attn_tp)
        flops = 2 * n * self.layers * (self.f.attn_params / lay.attn_tp + self.f.router_params)
        return Term(self.dense_w + act, flops, self.bw, self.bf16)

    def attention(self, dec, pre, ctx: float, isl: float) -> Term:
        """Attention core: decode reads the cached context; prefill attends causally within its prompt."""
        win = self.spec.sliding_window
        dec_keys = self.n_full * ctx + self.n_slide * min(ctx, win)          # keys per decode token
        pre_keys = self.n_full * isl / 2 + self.n_slide * min(isl / 2, win)  # mean keys per prompt token
        kv = self.kv_tok / self.kv_heads  # bytes per key per KV head (K and V)
        kv_bytes = dec * dec_keys * self.kv_heads * kv + pre * self.layers * self.kv_tok
        flops = 4 * self.heads * self.spec.head_dim * (dec * dec_keys + pre * pre_keys)
        return Term(kv_bytes, flops, self.bw, self.bf16)

    def moe(self, n) -> Term:
        """Expert GEMMs for the instance's tokens; this rank reads its share of the distinct experts."""
        s, lay = self.spec, self.lay
        e, k = s.num_local_experts, s.num_experts_per_tok
        n_inst = n * lay.dp
        touched = e * (1.0 - (1.0 - k / e) ** n_inst)                   # distinct experts per layer
        local = np.maximum(touched / lay.ep, np.minimum(touched, 1.0))  # busiest rank holds >= 1 of them
        routed = n_inst * k / lay.ep                                     # token-expert pairs here
        act = routed * BF16 * (2 * s.hidden_size + 3 * s.intermediate_size / lay.moe_tp)
        w = local * self.expert_w
        flops = 2 * n_inst * k * self.f.expert_params / lay.tp
        floor = self.layers * local * self.eff.expert_us * 1e-6         # per local expert GEMM
        return Term(self.layers * (w + act), self.layers * flops, self.bw, self.moe_peak, self.moe_scale,
                    floor / self.moe_scale)

    def lm_head(self, seqs) -> Term:
        """lm_head for every sequence that samples this iteration (FP32 logits written)."""
        logits = seqs * self.spec.vocab_size * 4 / self.lay.attn_tp
        flops = 2 * seqs * self.f.lm_head_params / self.lay.attn_tp
        return Term(self.lm_w + logits, flops, self.bw, self.bf16)

    def collectives(self, n, seqs):
        """Seconds of NVLink collectives: 2 per layer (after attention and after the MoE)."""
        lay, h, eff = self.lay, self.spec.hidden_size, self.eff
        if lay.tp == 1:
            return 0.0 * n
        if lay.attention_dp:  # all-to-all dispatch (activation dtype) + combine (BF16) to expert owners
            k = self.spec.num_experts_per_tok
            vol = n * k * h * (lay.quant_spec.act_bytes + BF16) * lay.moe_tp * (lay.tp - 1) / lay.tp
            return self.layers * (2 * eff.collective_us * 1e-6 + vol / self.link)
        ring = 2 * (lay.tp - 1) / lay.tp  # ring all-reduce moves 2(n-1)/n of the buffer
        per_layer = 2 * (eff.collective_us * 1e-6 + ring * n * h * BF16 / self.link)
        gather = eff.collective_us * 1e-6 + seqs * self.spec.vocab_size * 4 * (lay.tp - 1) / lay.tp / self.link
        return self.layers * per_layer + gather

    def fixed(self, seqs):
        eff = self.eff
        return self.layers * eff.layer_us * 1e-6 + eff.step_ms * 1e-3 + seqs * eff.seq_us * 1e-6

    # ---- one iteration --------------------------------------------------------------------------
    def terms(self, dec, pre, ctx: float, isl: float) -> dict[str, Term]:
        n = dec + pre
        seqs = dec + pre / isl
        return {"dense": self.dense(n), "attention": self.attention(dec, pre, ctx, isl),
                "moe": self.moe(n), "lm_head": self.lm_head(seqs)}

    def iteration(self, dec, pre, ctx: float, isl: float):
        """Seconds for one rank to run `dec` decode + `pre` prefill tokens (arrays allowed)."""
        n = dec + pre
        seqs = dec + pre / isl
        total = self.collectives(n, seqs) + self.fixed(seqs)
        for term in self.terms(dec, pre, ctx, isl).values():
            total = total + term.seconds
        return total

    def breakdown(self, dec: float, pre: float, ctx: float, isl: float) -> dict:
        """The iteration of `iteration()` itemized (scalars), for `trtkit plan estimate --json`."""
        n, seqs = dec + pre, dec + pre / isl
        out = {"decode_tokens": dec, "prefill_tokens": pre, "context_tokens": ctx, "components": {}}
        for name, t in self.terms(dec, pre, ctx, isl).items():
            out["components"][name] = {
                "bytes": float(t.bytes), "flops": float(t.flops), "memory_ms": float(t.memory_s) * 1e3,
                "compute_ms": float(t.compute_s) * 1e3, "overhead_ms": float(t.extra_s) * 1e3,
                "ms": float(t.seconds) * 1e3,
                "bound": "memory" if t.memory_s >= t.compute_s else "compute"}
        out["collectives_ms"] = float(self.collectives(n, seqs)) * 1e3
        out["fixed_ms"] = float(self.fixed(seqs)) * 1e3
        out["total_ms"] = float(self.iteration(dec, pre, ctx, isl)) * 1e3
        return out


# One GPU running the plugin: how bench/bench_gpu.py times the MoE layers the prior is fitted to.
PLUGIN_BENCH_LAYOUT = Layout(1, 1, False, MoeBackend.TRTKIT, QuantAlgo.W4A16_NVFP4, KvDtype.FP8)


def plugin_speed_prior(points, gpu_key: str = "h100") -> float:
    """The TRTKIT entry of BACKEND_SPEED from measured MoE decode points [(model, batch, us per layer)]
    (BENCHMARKS.md's graph-timed table): the median over the points of the model's per-layer MoE time at
    speed 1.0 divided by the measured time."""
    ratios = []
    for model, batch, us in points:
        pm = PerfModel(resolve_model(model).spec, gpu(gpu_key), PLUGIN_BENCH_LAYOUT)
        at_speed_1 = float(pm.moe(batch).seconds) * pm.moe_scale / pm.layers * 1e6
        ratios.append(at_speed_1 / us)
    return statistics.median(ratios)
