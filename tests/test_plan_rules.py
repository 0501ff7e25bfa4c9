"""Layout rules: which tensor/expert-parallel layouts TensorRT-LLM accepts for gpt-oss, with exact errors."""

from __future__ import annotations

import pytest

from recipes.errors import LayoutError
from recipes.hardware import gpu
from recipes.layout import Layout, check_fleet, check_layout, default_backend, instance_sizes
from recipes.memory import Workload
from recipes.model import resolve_model
from recipes.precision import Checkpoint, KvDtype, MoeBackend, QuantAlgo
from recipes.render import write_picks
from recipes.search import Candidate, PlanRequest, Profile, Sla, pareto, pick, search, valid_layouts

B, H, N16 = QuantAlgo.W4A8_MXFP4_MXFP8, QuantAlgo.W4A16_MXFP4, QuantAlgo.W4A16_NVFP4
SPEC120 = resolve_model("gpt-oss-120b").spec
SPEC20 = resolve_model("gpt-oss-20b").spec


def lay(tp, ep, adp=False, backend=MoeBackend.TRTLLM, quant=B, kv=KvDtype.FP8):
    return Layout(tp=tp, ep=ep, attention_dp=adp, moe_backend=backend, quant=quant, kv_dtype=kv)


VALID = [
    ("b200", lay(8, 1)),                                   # curated latency: TP8, EP1
    ("b200", lay(2, 2, adp=True)),                         # curated throughput: TP2/EP2 + attention DP
    ("b200", lay(8, 8, adp=True, quant=QuantAlgo.NVFP4)),  # DEP8, the trtkit NVFP4 checkpoint
    ("h100", lay(4, 4, adp=True, backend=MoeBackend.TRITON, quant=H)),  # perf-overview H100 DEP4
    ("h200", lay(8, 2, backend=MoeBackend.CUTLASS, quant=H, kv=KvDtype.AUTO)),
    ("h100", lay(1, 1, backend=MoeBackend.TRTKIT, quant=N16)),     # one NVFP4 checkpoint on Hopper too
    ("gb200", lay(72, 8, adp=True)),                       # a whole rack: attention DP 72, EP 8, MoE TP 9
    ("gb200", lay(16, 16)),                                # beyond one HGX board, inside NVL72
]


@pytest.mark.parametrize("gpu_key,layout", VALID, ids=[f"{g}-{x.label}" for g, x in VALID])
def test_valid_layouts_pass(gpu_key, layout):
    check_layout(layout, SPEC120, gpu(gpu_key))


INVALID = [
    ("b200", lay(8, 3), "moe_expert_parallel_size=3 must divide tensor_parallel_size=8 (MoE TP = tp / ep = "
     "8 / 3 = 2.67); use ep in [1, 2, 4, 8]"),
    ("gb200", lay(72, 72, adp=True), "128 experts do not divide over moe_expert_parallel_size=72 "
     "(128 / 72 = 1.78); use ep in [1, 2, 4, 8] (divides 128 and tp=72)"),
    ("gb200", lay(6, 1), "64 attention heads do not split over tensor_parallel_size=6 (64 / 6 = 10.67); "
     "use tp in [1, 2, 4, 8, 16, 32, 64] or enable attention DP"),
    ("gb200", lay(7, 1, adp=True), "intermediate_size 2880 does not split over MoE TP = tp / ep = 7 / 1 = 7 "
     "(2880 / 7 = 411.43); raise ep so that MoE TP divides 2880"),
    ("b200", lay(1, 1, adp=True), "enable_attention_dp needs tensor_parallel_size > 1 (got 1): one GPU has no "
     "ranks to split requests over; drop --attention-dp"),
    ("b200", lay(16, 16, adp=True), "an instance of tensor_parallel_size=16 GPUs exceeds the B200 (HGX) NVLink "
     "domain of 8 GPUs; use tp <= 8 and replicas across domains"),
    ("h100", lay(8, 8, backend=MoeBackend.TRITON, quant=QuantAlgo.NVFP4),
     "NVFP4 needs FP4 tensor cores (Blackwell, SM100) and never runs on Hopper; H100 SXM is hopper (SM90): "
     "use W4A16_MXFP4 with the mxfp4 checkpoint or W4A16_NVFP4 with the nvfp4 checkpoint"),
    ("h200", lay(8, 8, backend=MoeBackend.TRITON, quant=B),
     "W4A8_MXFP4_MXFP8 is not served on this architecture; H200 SXM is hopper (SM90): use W4A16_MXFP4 with "
     "the mxfp4 checkpoint or W4A16_NVFP4 with the nvfp4 checkpoint"),
    ("h100", lay(8, 8, backend=MoeBackend.TRTLLM, quant=H),
     "MoE backend TRTLLM is not available on H100 SXM (hopper); choose one of TRITON, CUTLASS, TRTKIT"),
    ("b200", lay(8, 8, backend=MoeBackend.TRITON), "MoE backend TRITON is not available on B200 (HGX) "
     "(blackwell); choose one of TRTLLM, CUTLASS"),
    ("h100", lay(8, 2, backend=MoeBackend.TRITON, quant=H), "MoE backend TRITON is expert-parallel only: MoE "
     "TP = tp / ep = 8 / 2 = 4 must be 1; set ep = tp = 8 or use CUTLASS"),
    ("h100", lay(2, 2, backend=MoeBackend.TRTKIT, quant=N16), "MoE backend TRTKIT (the trtkit::moe plugin) runs "
     "one GPU per instance: tensor_parallel_size=2 must be 1; serve 2 replicas instead"),
    ("h100", lay(1, 1, backend=MoeBackend.TRITON, quant=N16), "MoE backend TRITON does not serve W4A16_NVFP4 "
     "experts (it serves W4A16_MXFP4); use TRTKIT"),
    ("h200", lay(1, 1, backend=MoeBackend.TRTKIT, quant=H), "MoE backend TRTKIT does not serve W4A16_MXFP4 "
     "experts (it serves W4A16_NVFP4); use TRITON or CUTLASS"),
    ("b200", lay(1, 1, backend=MoeBackend.TRTKIT, quant=N16), "W4A16_NVFP4 is not served on this architecture; "
     "B200 (HGX) is blackwell (SM100): use NVFP4 with the nvfp4 checkpoint or W4A8_MXFP4_MXFP8 with the mxfp4 "
     "checkpoint"),
]


@pytest.mark.parametrize("gpu_key,layout,message", INVALID, ids=[m.split(" ")[0] + m.split(" ")[1] for _, _, m in INVALID])
def test_invalid_layouts_name_the_arithmetic(gpu_key, layout, message):
    with pytest.raises(LayoutError) as exc:
        check_layout(layout, SPEC120, gpu(gpu_key))
    assert str(exc.value) == message


def test_gpt_oss_20b_has_32_experts():
    with pytest.raises(LayoutError, match=r"^32 experts do not divide over moe_expert_parallel_size=64"):
        check_layout(lay(64, 64, adp=True), SPEC20, gpu("gb200"))
    check_layout(lay(64, 32, adp=True), SPEC20, gpu("gb200"))


def test_fleet_must_divide_into_instances():
    assert check_fleet(8, 72, gpu("gb200")) == 9
    with pytest.raises(LayoutError) as exc:
        check_fleet(16, 72, gpu("gb200"))
    assert str(exc.value) == ("72 GPUs do not divide into instances of 16 GPUs (72 / 16 = 4.50); use a GPU count "
                              "that is a multiple of 16")


def test_instance_sizes_stay_in_one_nvlink_domain():
    """Divisors of the fleet up to the domain; on GB200 (4-GPU trays) an instance above one tray fills whole
    trays: 6, 9 and 18 GPUs would put 4 + 2, 4 + 4 + 1, ... ranks on the nodes."""
    assert instance_sizes(72, gpu("gb200")) == [1, 2, 3, 4, 8, 12, 24, 36, 72]
    assert instance_sizes(16, gpu("b200")) == [1, 2, 4, 8]
    assert instance_sizes(12, gpu("h100")) == [1, 2, 3, 4, 6]
    assert instance_sizes(None, gpu("gb200"))[:6] == [1, 2, 3, 4, 8, 12]


def test_a_layout_spanning_hosts_unevenly_is_refused():
    """The same rule for layouts given by hand (plan estimate, a recipe being validated): TP6 on 4-GPU GB200
    trays would put 4 + 2 ranks on two nodes; TP8 (two whole trays) and TP3 (one tray) are fine."""
    with pytest.raises(LayoutError, match=r"tensor_parallel_size=6 GPUs spans .* hosts of 4 GPUs unevenly"):
        check_layout(lay(6, 2, adp=True), SPEC120, gpu("gb200"))
    check_layout(lay(8, 8, adp=True), SPEC120, gpu("gb200"))
    check_layout(lay(8, 8, adp=True), SPEC120, gpu("b200"))  # one 8-GPU host


def test_plan_on_an_uneven_gb200_fleet_writes_its_picks(tmp_path):
    """18 GB200 GPUs: a TP6 instance (2 trays, 4 + 2 ranks) was the throughput pick at >= 51 tokens/s/user and
    its lws.yaml failed validation (2 pods x 4 GPUs != 6); only whole-tray instances are searched now."""
    req = PlanRequest(model=resolve_model("gpt-oss-120b"), gpu=gpu("gb200"), work=Workload(1024, 1024), gpus=18,
                      sla=Sla(min_tps_user=51))
    result = search(req)
    assert all(c.layout.tp <= 4 or c.layout.tp % 4 == 0 for c in result.candidates)
    write_picks(result, tmp_path)


def test_search_space_of_a_rack_holds_only_valid_layouts():
    layouts = valid_layouts(resolve_model("gpt-oss-120b"), gpu("gb200"), instance_sizes(72, gpu("gb200")))
    assert layouts, "the rack must have layouts"
    assert all(128 % x.ep == 0 and x.tp % x.ep == 0 and x.tp <= 72 for x in layouts)
    assert all(x.attention_dp or 64 % x.tp == 0 for x in layouts)
    assert {x.tp for x in layouts if not x.attention_dp} == {1, 2, 4, 8}  # 16/32/64 do not divide 72
    assert any(x.tp == 72 for x in layouts) and not any(x.tp == 72 and x.ep == 72 for x in layouts)


def test_hopper_search_space_never_holds_w4a4():
    for key in ("h100", "h200"):
        model = resolve_model("gpt-oss-120b")
        assert {x.quant for x in valid_layouts(model, gpu(key), [1, 2, 4, 8])} == {QuantAlgo.W4A16_MXFP4}
        layouts = valid_layouts(model, gpu(key), [1, 2, 4, 8], Checkpoint.NVFP4) \
            + valid_layouts(model, gpu(key), [1, 2, 4, 8], Checkpoint.MXFP4)
        assert {x.quant for x in layouts} == {QuantAlgo.W4A16_MXFP4, QuantAlgo.W4A16_NVFP4}
        assert all(x.moe_tp == 1 for x in layouts if x.moe_backend is MoeBackend.TRITON)
        plugin = [x for x in layouts if x.quant is QuantAlgo.W4A16_NVFP4]
        assert {(x.tp, x.moe_backend) for x in plugin} == {(1, MoeBackend.TRTKIT)}


def test_default_backend_skips_expert_parallel_only_triton_when_moe_tp_above_1():
    """Hopper MoE is TRITON (expert parallel only) or CUTLASS (gpt-oss.md, serving.md)."""
    assert default_backend(gpu("h100"), 1, H) is MoeBackend.TRITON
    assert default_backend(gpu("h100"), 8, H) is MoeBackend.CUTLASS
    assert default_backend(gpu("b200"), 8, QuantAlgo.NVFP4) is MoeBackend.TRTLLM


def cand(user: float, per_gpu: float, tp: int = 1) -> Candidate:
    return Candidate(layout=lay(tp, 1), batch=1, concurrency=1, replicas=1, max_concurrency=1, ttft_ms=1.0,
                     tpot_ms=1000 / user, tps_per_user=user, tps_per_gpu=per_gpu, tps_instance=per_gpu * tp)


def test_frontier_and_picks_by_hand():
    """Frontier: no point beaten on both axes (a tie on tokens/s/GPU keeps the faster one). Picks: latency =
    the most GPU-efficient point within 5% of the best tokens/s/user (96 >= 0.95 x 100); throughput = the best
    tokens/s/GPU; balanced = max (user / 100) x (gpu / 400): 0.025, 0.12, 0.24, 0.2 -> (80, 120)."""
    a, b, c, d = cand(100, 10, tp=8), cand(96, 50, tp=8), cand(80, 120), cand(20, 400)
    dominated = [cand(90, 50), cand(70, 100), cand(10, 400)]
    front = pareto([d, *dominated, c, b, a])
    assert front == [a, b, c, d]
    assert pick(front) == {Profile.LATENCY: b, Profile.BALANCED: c, Profile.THROUGHPUT: d}


def test_attention_dp_concurrency_is_batch_times_ranks():
    """serving.md: under attention DP max_batch_size counts per rank, so concurrency = max_batch_size x GPUs."""
    req = PlanRequest(model=resolve_model("gpt-oss-120b"), gpu=gpu("b200"), work=Workload(1024, 1024), gpus=8)
    adp = [c for c in search(req).candidates if c.layout.attention_dp]
    assert adp and all(c.concurrency == c.batch * c.layout.tp for c in adp)
    assert all(c.max_concurrency % c.layout.tp == 0 for c in adp)
