"""In-flight batching steady state: TTFT, TPOT, tokens/s/user and tokens/s/GPU of one deployment.

Each rank group (one rank under attention DP, the whole instance otherwise) keeps `b` sequences in
flight. A sequence lives for OSL iterations, so every iteration also admits (b - 1) * ISL / OSL prompt
tokens of the OTHER sequences (the prefill that stalls this user's decode). Then:

  TPOT    = iteration(decode b, prefill (b - 1) * ISL / OSL)         at mean context ISL + OSL / 2
  TTFT    = iteration(decode b - 1, prefill ISL) + TPOT / 2 (waits for the running iteration)
            + queueing when clients keep more requests than the slots (Little's law)
  request = TTFT + (OSL - 1) * TPOT;  tokens/s per rank group = b * OSL / request
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from builder.spec import ModelSpec
from recipes.hardware import GpuSpec
from recipes.layout import Layout, check_layout
from recipes.memory import Workload, check_workload, max_num_tokens, memory_breakdown
from recipes.perf import PerfModel

# max_batch_size values the search tries (per rank under attention DP)
BATCH_GRID = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 640, 768, 1024, 1280, 1536, 2048,
              3072, 4096)


def steady_state(pm: PerfModel, running, work: Workload) -> dict:
    """Serving metrics with `running` sequences per rank group (array or scalar), no queueing."""
    b = np.asarray(running, dtype=float)
    ctx, isl, osl = work.isl + work.osl / 2, float(work.isl), float(work.osl)
    tpot = pm.iteration(b, (b - 1) * isl / osl, ctx, isl)
    ttft = pm.iteration(b - 1, isl + 0 * b, ctx, isl) + np.where(b > 1, tpot / 2, 0.0)
    request = ttft + (osl - 1) * tpot
    per_group = b * osl / request
    tps_instance = per_group * pm.lay.dp
    return {"tpot_s": tpot, "ttft_s": ttft, "request_s": request, "tps_per_user": 1.0 / tpot,
            "tps_instance": tps_instance, "tps_per_gpu": tps_instance / pm.lay.tp}


@dataclass(frozen=True)
class Estimate:
    """One deployment's predicted serving metrics and the arithmetic they came from."""

    ttft_ms: float
    tpot_ms: float
    tps_per_user: float
    tps_per_gpu: float
    tps_instance: float
    fits_memory: bool
    max_concurrency: int
    running_per_rank: float
    queue_ms: float
    breakdown: dict

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def estimate(spec: ModelSpec, gpu: GpuSpec, lay: Layout, batch: int, work: Workload,
             concurrency: int | None = None) -> Estimate:
    """`trtkit plan estimate`: batch = max_batch_size (per rank under attention DP); concurrency =
    requests the clients keep in flight for this instance (default: batch x attention-DP ranks)."""
    check_layout(lay, spec, gpu)
    check_workload(work, spec)
    conc = concurrency if concurrency is not None else batch * lay.dp
    mem = memory_breakdown(spec, gpu, lay, batch, work)
    slots = min(batch, mem.max_seqs_per_rank)          # sequences a rank can hold at once
    running = max(1.0, min(float(slots), conc / lay.dp)) if slots >= 1 else 1.0
    pm = PerfModel(spec, gpu, lay)
    m = {k: float(v) for k, v in steady_state(pm, running, work).items()}
    queue_s = m["request_s"] * max(0.0, conc / (running * lay.dp) - 1.0)
    ctx = work.isl + work.osl / 2
    breakdown = {
        "layout": {"tp": lay.tp, "ep": lay.ep, "moe_tp": lay.moe_tp, "attention_dp": lay.attention_dp,
                   "moe_backend": lay.moe_backend.value, "quant": lay.quant.value,
                   "kv_dtype": lay.kv_dtype.value, "max_batch_size": batch,
                   "max_num_tokens": max_num_tokens(batch, work), "max_seq_len": work.seq_len},
        "memory": mem.to_dict(),
        "decode_iteration": pm.breakdown(running, (running - 1) * work.isl / work.osl, ctx, work.isl),
        "prefill_iteration": pm.breakdown(running - 1, float(work.isl), ctx, work.isl),
        "efficiency": pm.eff.to_dict(),
        "arithmetic": _arithmetic(m, lay, running, queue_s, work),
    }
    return Estimate(ttft_ms=(m["ttft_s"] + queue_s) * 1e3, tpot_ms=m["tpot_s"] * 1e3,
                    tps_per_user=m["tps_per_user"], tps_per_gpu=m["tps_per_gpu"],
                    tps_instance=m["tps_instance"], fits_memory=mem.fits and batch <= mem.max_seqs_per_rank,
                    max_concurrency=mem.max_concurrency, running_per_rank=running, queue_ms=queue_s * 1e3,
                    breakdown=breakdown)


def _arithmetic(m: dict, lay: Layout, running: float, queue_s: float, work: Workload) -> dict[str, str]:
    return {
        "tps_per_user": f"{m['tps_per_user']:.1f} = 1000 / TPOT {m['tpot_s'] * 1e3:.3f} ms",
        "tps_per_gpu": (f"{m['tps_per_gpu']:.1f} = {running:g} running x {lay.dp} ranks x OSL {work.osl} / "
                        f"request {m['request_s']:.3f} s / {lay.tp} GPUs"),
        "request_s": (f"{m['request_s']:.3f} = TTFT {m['ttft_s']:.4f} + (OSL {work.osl} - 1) x TPOT "
                      f"{m['tpot_s']:.5f}"),
        "queue_ms": f"{queue_s * 1e3:.1f} = request x (concurrency / slots - 1), Little's law",
    }
