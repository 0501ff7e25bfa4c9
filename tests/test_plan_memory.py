"""Memory model against hand computations for gpt-oss-120b (every number below is worked by hand from
the config: hidden 2880, intermediate 2880, 128 experts, 36 layers (18 sliding, window 128), 64 query
heads / 8 KV heads of 64, vocab 201088)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from builder.layout import ExpertFormat
from recipes.estimate import estimate
from recipes.hardware import gpu
from recipes.layout import Layout
from recipes.memory import (
    Workload,
    activation_bytes,
    kv_bytes_per_seq,
    kv_bytes_per_token,
    max_num_tokens,
    max_seqs_per_rank,
    memory_breakdown,
    weight_bytes,
)
from recipes.model import model_bytes, resolve_model
from recipes.precision import KvDtype, MoeBackend, QuantAlgo
from recipes.search import PlanRequest, search

SPEC = resolve_model("gpt-oss-120b").spec
H, I, E, L, V = 2880, 2880, 128, 36, 201088  # noqa: E741  (I = intermediate_size)


def lay(tp, ep, adp=False, quant=QuantAlgo.NVFP4, kv=KvDtype.FP8):
    return Layout(tp=tp, ep=ep, attention_dp=adp, moe_backend=MoeBackend.TRTLLM, quant=quant, kv_dtype=kv)


# per layer, bytes
Q_O = (4096 * H + 4096 + H * 4096 + H) * 2            # q_proj + o_proj, weights and biases, BF16
K_V = 2 * (512 * H + 512) * 2                          # k_proj + v_proj
SINKS = 64 * 2
MX_EXPERT = (2 * I * (H // 32) * 17) + (H * (I // 32) * 17) + 2 * I * 2  # blocks 16 B + scale 1 B / 32, gate_up bias
NV_EXPERT = (H // 2 * 2 * I + H // 16 * 2 * I + 2 * I * 2) + (I // 2 * H + I // 16 * H)
DOWN_BIAS = H * 2
EMBED = LM_HEAD = V * H * 2


def test_checkpoint_bytes_by_hand():
    mx = model_bytes(SPEC, ExpertFormat.MXFP4)
    nv = model_bytes(SPEC, ExpertFormat.NVFP4)
    assert (mx.q_o, mx.k_v, mx.sinks) == (Q_O, K_V, SINKS) == (47_199_872, 5_900_288, 128)
    assert mx.expert_split == MX_EXPERT == 13_230_720
    assert nv.expert_split == NV_EXPERT == 14_008_320
    assert mx.expert_replicated == DOWN_BIAS
    assert nv.expert_shared == 4 * 4  # weight_scale_2 + input_scale, fp32, two projections
    norms_router = 2 * H * 2 + (E * H + E) * 2
    per_layer = Q_O + K_V + SINKS + norms_router
    assert mx.total == L * (per_layer + E * (MX_EXPERT + DOWN_BIAS)) + EMBED + LM_HEAD + H * 2 == 65_248_815_744


def test_weights_per_gpu_dep8_nvfp4():
    w = weight_bytes(SPEC, lay(8, 8, adp=True))
    assert w["attention"] == L * (Q_O + K_V + SINKS) == 1_911_610_368      # replicated under attention DP
    assert w["experts"] == L * 16 * (NV_EXPERT + DOWN_BIAS) == 8_072_110_080  # 128 / 8 = 16 experts each
    assert w["embed_lm_head"] == EMBED + LM_HEAD == 2_316_533_760


def test_weights_per_gpu_tp8_moe_tp8():
    w = weight_bytes(SPEC, lay(8, 1, quant=QuantAlgo.W4A8_MXFP4_MXFP8))
    assert w["attention"] == L * (Q_O / 8 + K_V / 8 + SINKS / 8)
    assert w["experts"] == L * E * (MX_EXPERT / 8 + DOWN_BIAS)                # each expert sliced 8 ways
    assert w["embed_lm_head"] == (EMBED + LM_HEAD) / 8


def test_kv_heads_duplicate_beyond_tp8():
    """TP16 (GB200) splits 64 query heads 4 per rank but only 8 KV heads exist: one per rank, duplicated."""
    w16 = weight_bytes(SPEC, lay(16, 16))
    assert w16["attention"] == L * (Q_O / 16 + K_V / 8 + SINKS / 16)
    assert kv_bytes_per_token(SPEC, lay(16, 16)) == kv_bytes_per_token(SPEC, lay(8, 8)) == 2 * 1 * 64 * 1


def test_kv_cache_per_sequence_caps_sliding_layers():
    tp1 = lay(1, 1)
    assert kv_bytes_per_token(SPEC, tp1) == 2 * 8 * 64 * 1 == 1024                      # K + V, FP8
    assert kv_bytes_per_token(SPEC, lay(1, 1, kv=KvDtype.AUTO)) == 2048                # BF16
    assert kv_bytes_per_seq(SPEC, tp1, 2048) == 18 * 1024 * 2048 + 18 * 1024 * 128 == 40_108_032
    assert kv_bytes_per_seq(SPEC, tp1, 2000) == 18 * 1024 * 2016 + 18 * 1024 * 128     # 32-token blocks
    assert kv_bytes_per_seq(SPEC, tp1, 100) == 36 * 1024 * 128                         # under the window
    assert kv_bytes_per_seq(SPEC, lay(8, 8), 9216) == (18 * 9216 + 18 * 128) * 128      # 1 KV head per rank


def test_max_concurrency_gb200_tp1_by_hand():
    g, work = gpu("gb200"), Workload(1024, 1024)
    weights = L * (Q_O + K_V + SINKS + 2 * H * 2 + (E * H + E) * 2 + 16) + L * E * (NV_EXPERT + DOWN_BIAS) \
        + EMBED + LM_HEAD + H * 2
    assert weights == 68_831_997_120
    tokens = 8192                                                           # max_num_tokens at batch 1
    act = tokens * 2 * (8 * H + 4096 + 1024) + tokens * 4 * 2 * (H + 3 * I) + 1 * V * 4
    assert activation_bytes(SPEC, lay(1, 1), 1, tokens) == act == 1_217_152_512
    runtime, graphs = 2.5 * 2**30, 0.25 * 2**30 + 0.125 * 2**20
    budget = 0.85 * (186e9 - weights - act - runtime - graphs)
    seqs = int(budget // 40_108_032)
    assert seqs == 2394
    mem = memory_breakdown(SPEC, g, lay(1, 1), 1, work)
    assert mem.max_seqs_per_rank == seqs and mem.max_concurrency == seqs and mem.fits
    dep4 = memory_breakdown(SPEC, g, lay(4, 4, adp=True), 1, work)
    assert dep4.max_concurrency == 4 * dep4.max_seqs_per_rank                # attention DP: per rank x 4


def test_does_not_fit_and_batch_over_capacity():
    small = replace(gpu("h100"), memory_bytes=60e9)                         # 65 GB of MXFP4 weights
    mem = memory_breakdown(SPEC, small, lay(1, 1, quant=QuantAlgo.W4A16_MXFP4), 1, Workload(1024, 1024))
    assert not mem.fits and mem.max_concurrency == 0
    h100 = gpu("h100")
    layout = Layout(1, 1, False, MoeBackend.TRITON, QuantAlgo.W4A16_MXFP4, KvDtype.FP8)
    cap = memory_breakdown(SPEC, h100, layout, 64, Workload(1024, 1024)).max_seqs_per_rank
    assert 100 < cap < 400
    assert estimate(SPEC, h100, layout, 64, Workload(1024, 1024)).fits_memory
    assert not estimate(SPEC, h100, layout, 1024, Workload(1024, 1024)).fits_memory


WEIGHTS_GB200_TP1 = 68_831_997_120  # NVFP4, one GPU (test_max_concurrency_gb200_tp1_by_hand)
SEQ_2K = 40_108_032                  # KV of one 1024 + 1024-token sequence, FP8, one GPU


def reserved_tp1(batch: int) -> float:
    """Everything but the KV cache on one GPU at max_batch_size `batch` (max_num_tokens 8192)."""
    act = 8192 * 2 * (8 * H + 4096 + 1024) + 8192 * 4 * 2 * (H + 3 * I) + batch * V * 4
    return WEIGHTS_GB200_TP1 + act + 2.5 * 2**30 + 0.25 * 2**30 + batch * 0.125 * 2**20


def test_kv_capacity_boundary_by_hand():
    """A GPU with room for 64.9 sequences at batch 64 holds 64 (whole sequences, CUDA-graph slots counted);
    the search admits max_batch_size 64 there and not 96; half a sequence of room does not fit."""
    work = Workload(1024, 1024)
    g = replace(gpu("gb200"), memory_bytes=reserved_tp1(64) + 64.9 * SEQ_2K / 0.85)
    assert max_seqs_per_rank(SPEC, g, lay(1, 1), np.array([64.0]), work).tolist() == [64]
    mem = memory_breakdown(SPEC, g, lay(1, 1), 64, work)
    assert mem.max_seqs_per_rank == 64 and mem.fits
    req = PlanRequest(model=resolve_model("gpt-oss-120b"), gpu=g, work=work, gpus=1)
    batches = {c.batch for c in search(req).candidates if c.layout == lay(1, 1)}
    assert 64 in batches and 96 not in batches
    tight = replace(gpu("gb200"), memory_bytes=reserved_tp1(1) + 0.5 * SEQ_2K / 0.85)
    mem = memory_breakdown(SPEC, tight, lay(1, 1), 1, work)
    assert mem.free_after_load > 0 and mem.max_seqs_per_rank == 0 and not mem.fits


def test_attention_dp_routes_every_ranks_tokens_to_the_experts():
    """DEP4: each rank runs max_num_tokens through attention, and its experts (32 of 128) receive on average
    tokens x 4 ranks x top-4 / 4 = 4 x tokens routed pairs, as on one GPU holding all 128."""
    act = 8192 * 2 * (8 * H + 4096 + 1024) + 8192 * 4 * 2 * (H + 3 * I) + 1 * V * 4
    assert activation_bytes(SPEC, lay(4, 4, adp=True), 1, 8192) == act == 1_217_152_512


def test_max_num_tokens_rounds_prompt_plus_batch_up_to_1024():
    assert max_num_tokens(1, Workload(1024, 1024)) == 8192             # the TensorRT-LLM default floor
    assert max_num_tokens(64, Workload(8192, 1024)) == 9216            # 8192 + 64 -> 9 x 1024
    assert max_num_tokens(1024, Workload(8192, 1024)) == 9216
    assert max_num_tokens(1025, Workload(8192, 1024)) == 10240
