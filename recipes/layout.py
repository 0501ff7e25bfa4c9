"""A TensorRT-LLM parallel layout for gpt-oss as a validated value object.

Terms are TensorRT-LLM's (`tensorrt_llm/mapping.py`, `llm_args.py`): `tp` = `tensor_parallel_size` = the
GPUs of one instance; `ep` = `moe_expert_parallel_size`; MoE TP = tp / ep; `attention_dp` =
`enable_attention_dp` (attention replicated on every rank, requests and KV cache split among the ranks,
`max_batch_size` then counts per rank). Pipeline parallelism is not supported for gpt-oss.
Every rule raises `LayoutError` with the arithmetic and the fix (rules: shared/reference/serving.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.spec import ModelSpec
from recipes.errors import LayoutError
from recipes.hardware import GpuSpec
from recipes.precision import (
    ARCH_PRECISION,
    BACKEND_QUANTS,
    QUANTS,
    KvDtype,
    MoeBackend,
    QuantAlgo,
    QuantSpec,
)


@dataclass(frozen=True)
class Layout:
    """How one instance runs: parallel split and the precision/kernels choices."""

    tp: int                       # tensor_parallel_size: GPUs in the instance
    ep: int                       # moe_expert_parallel_size
    attention_dp: bool            # enable_attention_dp
    moe_backend: MoeBackend       # moe_config.backend
    quant: QuantAlgo              # expert quantization (from the checkpoint + GPU)
    kv_dtype: KvDtype             # kv_cache_config.dtype

    @property
    def moe_tp(self) -> int:
        return self.tp // self.ep

    @property
    def attn_tp(self) -> int:
        """Ranks that split the attention heads (1 under attention DP: each rank holds all heads)."""
        return 1 if self.attention_dp else self.tp

    @property
    def dp(self) -> int:
        """Ranks that split the requests (tp under attention DP, else 1)."""
        return self.tp if self.attention_dp else 1

    @property
    def quant_spec(self) -> QuantSpec:
        return QUANTS[self.quant]

    @property
    def label(self) -> str:
        par = f"DEP{self.tp}" if self.attention_dp and self.ep == self.tp else (
            f"TP{self.tp}/EP{self.ep}" + ("+ADP" if self.attention_dp else ""))
        return f"{par} {self.moe_backend.value} {self.quant.value} kv={self.kv_dtype.value}"


def _divisors(n: int, up_to: int | None = None) -> list[int]:
    """Divisors of n, those <= up_to only when given (a scan to n itself is too slow for a huge n)."""
    top = n if up_to is None else min(n, up_to)
    return [d for d in range(1, top + 1) if n % d == 0]


def check_layout(layout: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    """Raise LayoutError for the first rule `layout` breaks; return None when TensorRT-LLM accepts it."""
    for rule in RULES:
        rule(layout, spec, gpu)


def _positive(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    if lay.tp < 1 or lay.ep < 1:
        raise LayoutError(f"tensor_parallel_size={lay.tp} and moe_expert_parallel_size={lay.ep} "
                          f"must both be >= 1")


def _ep_divides_tp(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    if lay.tp % lay.ep:
        raise LayoutError(
            f"moe_expert_parallel_size={lay.ep} must divide tensor_parallel_size={lay.tp} "
            f"(MoE TP = tp / ep = {lay.tp} / {lay.ep} = {lay.tp / lay.ep:.2f}); "
            f"use ep in {_divisors(lay.tp)}")


def _experts_divide(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    e = spec.num_local_experts
    if e % lay.ep:
        valid = [d for d in _divisors(e) if lay.tp % d == 0]
        raise LayoutError(
            f"{e} experts do not divide over moe_expert_parallel_size={lay.ep} "
            f"({e} / {lay.ep} = {e / lay.ep:.2f}); use ep in {valid} (divides {e} and tp={lay.tp})")


def _heads_divide(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    h = spec.num_attention_heads
    if not lay.attention_dp and h % lay.tp:
        valid = [d for d in _divisors(h) if d <= gpu.nvlink_domain]
        raise LayoutError(
            f"{h} attention heads do not split over tensor_parallel_size={lay.tp} "
            f"({h} / {lay.tp} = {h / lay.tp:.2f}); use tp in {valid} or enable attention DP")


def _moe_tp_divides(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    i = spec.intermediate_size
    if i % lay.moe_tp:
        raise LayoutError(
            f"intermediate_size {i} does not split over MoE TP = tp / ep = {lay.tp} / {lay.ep} = "
            f"{lay.moe_tp} ({i} / {lay.moe_tp} = {i / lay.moe_tp:.2f}); raise ep so that MoE TP divides {i}")


def _attention_dp_needs_ranks(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    if lay.attention_dp and lay.tp == 1:
        raise LayoutError("enable_attention_dp needs tensor_parallel_size > 1 (got 1): one GPU has no "
                          "ranks to split requests over; drop --attention-dp")


def _one_domain(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    if lay.tp > gpu.nvlink_domain:
        raise LayoutError(
            f"an instance of tensor_parallel_size={lay.tp} GPUs exceeds the {gpu.name} NVLink domain of "
            f"{gpu.nvlink_domain} GPUs; use tp <= {gpu.nvlink_domain} and replicas across domains")


def deployable_size(n: int, gpu: GpuSpec) -> bool:
    """An instance of n GPUs fits one host or fills whole hosts: the launchers give every node of an
    instance the same GPU count (ranks per node), so 6 GPUs over 4-GPU GB200 trays (4 + 2) cannot run."""
    return n <= gpu.gpus_per_host or n % gpu.gpus_per_host == 0


def _whole_hosts(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    if not deployable_size(lay.tp, gpu):
        raise LayoutError(f"an instance of tensor_parallel_size={lay.tp} GPUs spans {gpu.name} hosts of "
                          f"{gpu.gpus_per_host} GPUs unevenly; use tp <= {gpu.gpus_per_host} or a multiple of it")


def _quant_on_arch(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    allowed = ARCH_PRECISION[gpu.arch].quants
    if lay.quant not in allowed:
        why = (" needs FP4 tensor cores (Blackwell, SM100) and never runs on Hopper"
               if lay.quant is QuantAlgo.NVFP4 else " is not served on this architecture")
        raise LayoutError(
            f"{lay.quant.value}{why}; {gpu.name} is {gpu.arch.value} (SM{gpu.compute_capability.replace('.', '')}): "
            f"use {' or '.join(f'{q.value} with the {QUANTS[q].checkpoint.value} checkpoint' for q in allowed)}")


def _backend_on_arch(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    allowed = ARCH_PRECISION[gpu.arch].backends
    if lay.moe_backend not in allowed:
        raise LayoutError(f"MoE backend {lay.moe_backend.value} is not available on {gpu.name} "
                          f"({gpu.arch.value}); choose one of {', '.join(b.value for b in allowed)}")


def _ep_only_backend(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    if lay.moe_backend in ARCH_PRECISION[gpu.arch].ep_only_backends and lay.moe_tp != 1:
        raise LayoutError(
            f"MoE backend {lay.moe_backend.value} is expert-parallel only: MoE TP = tp / ep = "
            f"{lay.tp} / {lay.ep} = {lay.moe_tp} must be 1; set ep = tp = {lay.tp} or use CUTLASS")


def _backend_serves_quant(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    served = BACKEND_QUANTS[lay.moe_backend]
    if lay.quant not in served:
        other = [b.value for b in ARCH_PRECISION[gpu.arch].backends if lay.quant in BACKEND_QUANTS[b]]
        raise LayoutError(f"MoE backend {lay.moe_backend.value} does not serve {lay.quant.value} experts (it serves "
                          f"{', '.join(q.value for q in served)}); use {' or '.join(other) or 'another precision'}")


def _single_gpu_backend(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    if lay.moe_backend in ARCH_PRECISION[gpu.arch].single_gpu_backends and lay.tp != 1:
        raise LayoutError(f"MoE backend {lay.moe_backend.value} (the trtkit::moe plugin) runs one GPU per "
                          f"instance: tensor_parallel_size={lay.tp} must be 1; serve {lay.tp} replicas instead")


def _kv_on_arch(lay: Layout, spec: ModelSpec, gpu: GpuSpec) -> None:
    allowed = ARCH_PRECISION[gpu.arch].kv_dtypes
    if lay.kv_dtype not in allowed:
        raise LayoutError(f"kv_cache_config.dtype {lay.kv_dtype.value} is not available on {gpu.name}; "
                          f"choose one of {', '.join(k.value for k in allowed)}")


RULES = (_positive, _ep_divides_tp, _experts_divide, _heads_divide, _moe_tp_divides,
         _attention_dp_needs_ranks, _one_domain, _whole_hosts, _quant_on_arch, _backend_on_arch, _ep_only_backend,
         _backend_serves_quant, _single_gpu_backend, _kv_on_arch)


def check_fleet(tp: int, gpus: int, gpu: GpuSpec) -> int:
    """Replicas of a `tp`-GPU instance in a fleet of `gpus` GPUs (must divide evenly)."""
    if gpus < 1 or gpus % tp:
        raise LayoutError(f"{gpus} GPUs do not divide into instances of {tp} GPUs "
                          f"({gpus} / {tp} = {gpus / tp:.2f}); use a GPU count that is a multiple of {tp}")
    return gpus // tp


def instance_sizes(gpus: int | None, gpu: GpuSpec) -> list[int]:
    """Instance sizes a fleet of `gpus` can run (None: any fleet): divisors of the fleet within one NVLink
    domain that are `deployable_size`s (the search skips the others rather than have _whole_hosts refuse them)."""
    sizes = range(1, gpu.nvlink_domain + 1) if gpus is None else _divisors(gpus, up_to=gpu.nvlink_domain)
    return [n for n in sizes if deployable_size(n, gpu)]


def default_backend(gpu: GpuSpec, moe_tp: int, quant: QuantAlgo | None = None) -> MoeBackend:
    """The first allowed backend that accepts this MoE TP and serves `quant` (any precision: None)."""
    prec = ARCH_PRECISION[gpu.arch]
    ok = [b for b in prec.backends if (moe_tp == 1 or b not in prec.ep_only_backends)
          and (quant is None or quant in BACKEND_QUANTS[b])]
    return ok[0] if ok else prec.backends[0]
