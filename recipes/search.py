"""Search every valid deployment of a model on a GPU fleet; keep the Pareto frontier and the picks.

A fleet of N GPUs runs `N / tp` replicas of one instance of `tp` GPUs; an instance never leaves its
NVLink domain (8 GPUs on HGX, up to 72 on GB200 NVL72). For every instance size, expert-parallel
split, attention-DP choice, MoE backend, expert precision and KV dtype the architecture allows, and for
every max_batch_size of `BATCH_GRID` whose KV cache fits, the performance model predicts TTFT, TPOT and
throughput; SLA filters apply; the frontier keeps deployments no other beats on both tokens/s/GPU and
tokens/s/user.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from recipes.errors import LayoutError, PlanError
from recipes.estimate import BATCH_GRID, steady_state
from recipes.hardware import GpuSpec
from recipes.layout import Layout, check_fleet, check_layout, instance_sizes
from recipes.memory import Workload, check_workload, max_seqs_per_rank
from recipes.model import ModelRef
from recipes.perf import PerfModel
from recipes.precision import ARCH_PRECISION, QUANTS, Checkpoint


class Profile(str, Enum):
    """The three picks written as recipes."""

    LATENCY = "latency"        # highest tokens/s/user on the frontier
    BALANCED = "balanced"      # frontier point maximizing (user / best user) x (gpu / best gpu)
    THROUGHPUT = "throughput"  # highest tokens/s/GPU on the frontier


@dataclass(frozen=True)
class Sla:
    """Service-level limits; None = no limit."""

    max_ttft_ms: float | None = None
    max_tpot_ms: float | None = None
    min_tps_user: float | None = None

    def describe(self) -> str:
        parts = [f"TTFT <= {self.max_ttft_ms:g} ms" if self.max_ttft_ms else "",
                 f"TPOT <= {self.max_tpot_ms:g} ms" if self.max_tpot_ms else "",
                 f"tokens/s/user >= {self.min_tps_user:g}" if self.min_tps_user else ""]
        return ", ".join(p for p in parts if p) or "none"


@dataclass(frozen=True)
class PlanRequest:
    model: ModelRef
    gpu: GpuSpec
    work: Workload
    gpus: int | None = None          # fleet size; None with target_users = as many as needed
    sla: Sla = field(default_factory=Sla)
    target_users: int | None = None  # concurrent users the fleet must hold
    checkpoint: Checkpoint | None = None  # serve only this checkpoint (None: whichever is best)

    def __post_init__(self) -> None:
        if self.gpus is None and self.target_users is None:
            raise PlanError("give --gpus N (the fleet) or --target-users N (size the fleet), or both")
        if self.gpus is not None and self.gpus < 1:
            raise PlanError(f"--gpus {self.gpus}: need at least one GPU")
        if self.target_users is not None and self.target_users < 1:
            raise PlanError(f"--target-users {self.target_users}: need at least one user")


@dataclass(frozen=True)
class Candidate:
    """One deployment: a layout, its max_batch_size, and the fleet it is replicated over."""

    layout: Layout
    batch: int              # max_batch_size (per rank under attention DP)
    concurrency: int        # requests in flight per instance = batch x attention-DP ranks
    replicas: int
    max_concurrency: int    # per instance, from the KV cache
    ttft_ms: float
    tpot_ms: float
    tps_per_user: float
    tps_per_gpu: float
    tps_instance: float

    @property
    def fleet_gpus(self) -> int:
        return self.replicas * self.layout.tp

    @property
    def users(self) -> int:
        return self.concurrency * self.replicas

    @property
    def tps_fleet(self) -> float:
        return self.tps_instance * self.replicas

    def key(self) -> tuple:
        """Deterministic tie-break: fewer GPUs per instance, then the layout's text."""
        return (self.layout.tp, self.layout.label, self.batch)


@dataclass(frozen=True)
class SearchResult:
    request: PlanRequest
    candidates: tuple[Candidate, ...]   # every feasible deployment meeting the SLAs
    frontier: tuple[Candidate, ...]     # Pareto set, by decreasing tokens/s/user
    picks: dict[Profile, Candidate]
    fleet_pick: Candidate | None        # fewest GPUs for --target-users
    layouts_evaluated: int
    deployments_evaluated: int


def valid_layouts(model: ModelRef, gpu: GpuSpec, sizes: list[int],
                  checkpoint: Checkpoint | None = None) -> list[Layout]:
    """Every layout TensorRT-LLM accepts for these instance sizes (invalid ones are skipped), serving
    `checkpoint` when one is given. Plugin MoE backends (trtkit::moe, which serves the NVFP4 checkpoint) only
    when a checkpoint is named: they exist to serve one NVFP4 checkpoint across a mixed fleet, and have not
    run inside TensorRT-LLM on a GPU node, so a plan that names no checkpoint stays on TensorRT-LLM's own
    MoE, however fast the kernel."""
    prec = ARCH_PRECISION[gpu.arch]
    spec = model.spec
    quants = [q for q in prec.quants if checkpoint is None or QUANTS[q].checkpoint is checkpoint]
    backends = [b for b in prec.backends if checkpoint is not None or not b.is_plugin]
    out = []
    for tp in sizes:
        eps = [d for d in range(1, tp + 1) if tp % d == 0 and spec.num_local_experts % d == 0]
        for ep, adp, backend, quant, kv in itertools.product(eps, (False, True), backends, quants,
                                                             prec.kv_dtypes):
            lay = Layout(tp=tp, ep=ep, attention_dp=adp, moe_backend=backend, quant=quant, kv_dtype=kv)
            try:
                check_layout(lay, spec, gpu)
            except LayoutError:
                continue
            out.append(lay)
    return out


def _evaluate(req: PlanRequest, lay: Layout, grid: np.ndarray) -> list[Candidate]:
    spec, gpu, work, sla = req.model.spec, req.gpu, req.work, req.sla
    cap = max_seqs_per_rank(spec, gpu, lay, grid, work)
    ok = grid <= cap
    if not ok.any():
        return []
    b = grid[ok]
    m = steady_state(PerfModel(spec, gpu, lay), b, work)
    ttft, tpot = m["ttft_s"] * 1e3, m["tpot_s"] * 1e3
    keep = np.ones_like(b, dtype=bool)
    if sla.max_ttft_ms is not None:
        keep &= ttft <= sla.max_ttft_ms
    if sla.max_tpot_ms is not None:
        keep &= tpot <= sla.max_tpot_ms
    if sla.min_tps_user is not None:
        keep &= m["tps_per_user"] >= sla.min_tps_user
    out = []
    for i in np.flatnonzero(keep):
        conc = int(b[i]) * lay.dp
        replicas = _replicas(req, lay.tp, conc)
        if replicas is None:
            continue
        out.append(Candidate(layout=lay, batch=int(b[i]), concurrency=conc, replicas=replicas,
                             max_concurrency=int(cap[ok][i]) * lay.dp, ttft_ms=float(ttft[i]),
                             tpot_ms=float(tpot[i]), tps_per_user=float(m["tps_per_user"][i]),
                             tps_per_gpu=float(m["tps_per_gpu"][i]), tps_instance=float(m["tps_instance"][i])))
    return out


def _replicas(req: PlanRequest, tp: int, conc: int) -> int | None:
    """Replicas of a tp-GPU instance: fill the fleet, or as many as the target users need."""
    if req.target_users is None:
        return check_fleet(tp, req.gpus, req.gpu)
    need = math.ceil(req.target_users / conc)
    if req.gpus is not None and need * tp > req.gpus:
        return None
    return need


def pareto(cands: list[Candidate]) -> list[Candidate]:
    """Deployments no other beats on both tokens/s/user and tokens/s/GPU, by decreasing tokens/s/user."""
    ordered = sorted(cands, key=lambda c: (-c.tps_per_user, -c.tps_per_gpu, c.key()))
    front, best = [], -1.0
    for c in ordered:
        if c.tps_per_gpu > best:
            front.append(c)
            best = c.tps_per_gpu
    return front


LATENCY_TOLERANCE = 0.05  # the latency pick may give up 5% of the best tokens/s/user for GPU efficiency


def pick(front: list[Candidate]) -> dict[Profile, Candidate]:
    """latency: the most GPU-efficient point within LATENCY_TOLERANCE of the best tokens/s/user;
    throughput: the best tokens/s/GPU; balanced: the knee, max (user / best user) x (gpu / best gpu)."""
    top_user = max(c.tps_per_user for c in front)
    top_gpu = max(c.tps_per_gpu for c in front)
    fast = [c for c in front if c.tps_per_user >= (1 - LATENCY_TOLERANCE) * top_user]
    balanced = max(front, key=lambda c: (c.tps_per_user / top_user) * (c.tps_per_gpu / top_gpu))
    return {Profile.LATENCY: fast[-1], Profile.BALANCED: balanced, Profile.THROUGHPUT: front[-1]}


def search(req: PlanRequest) -> SearchResult:
    check_workload(req.work, req.model.spec)
    layouts = valid_layouts(req.model, req.gpu, instance_sizes(req.gpus, req.gpu), req.checkpoint)
    grid = np.array(BATCH_GRID, dtype=float)
    cands = [c for lay in layouts for c in _evaluate(req, lay, grid)]
    if not cands:
        raise PlanError(_nothing_fits(req, layouts))
    front = pareto(cands)
    fleet = None
    if req.target_users is not None:
        fleet = min(cands, key=lambda c: (c.fleet_gpus, -c.tps_per_user, c.key()))
    return SearchResult(request=req, candidates=tuple(cands), frontier=tuple(front), picks=pick(front),
                        fleet_pick=fleet, layouts_evaluated=len(layouts),
                        deployments_evaluated=len(layouts) * len(grid))


def _nothing_fits(req: PlanRequest, layouts: list[Layout]) -> str:
    where = f"{req.gpus} x {req.gpu.name}" if req.gpus else f"{req.gpu.name} instances"
    if req.checkpoint is not None:
        where += f" serving the {req.checkpoint.value} checkpoint"
    if not layouts:
        return (f"no valid layout of {req.model.name} on {where} (instance sizes {instance_sizes(req.gpus, req.gpu)}); "
                f"see `trtkit plan estimate` for the rule each one breaks")
    users = f" for {req.target_users} users" if req.target_users else ""
    return (f"no deployment of {req.model.name} on {where}{users} fits memory and meets the SLA "
            f"({req.sla.describe()}) at ISL/OSL {req.work.isl}/{req.work.osl}; {len(layouts)} layouts tried: "
            f"relax the SLA, shorten the workload or add GPUs")
