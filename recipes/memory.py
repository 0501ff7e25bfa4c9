"""Memory per GPU for a layout: weights by precision, KV cache per token, activations, reserves.

Every number is bytes per GPU. Weights come from the checkpoint tensor tables (`recipes.model`); the
KV cache holds K and V for `kv_heads_per_rank` heads per layer, full-attention layers for the whole
sequence and sliding-window layers for at most the window, both rounded up to KV blocks.
Functions take `batch` as an int or a numpy array (the search evaluates many batch sizes at once).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from builder.spec import ModelSpec
from recipes.errors import PlanError
from recipes.hardware import GpuSpec
from recipes.layout import Layout
from recipes.model import model_bytes
from recipes.precision import KV_BYTES

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class MemoryConstants:
    """Runtime allowances (TensorRT-LLM PyTorch backend defaults and typical measured overheads)."""

    free_gpu_memory_fraction: float = 0.85  # kv_cache_config.free_gpu_memory_fraction written in recipes
    tokens_per_block: int = 32              # KV cache block size (tokens)
    runtime_bytes: float = 2.5 * GiB        # CUDA context, NCCL buffers, GEMM workspaces, allocator slack
    graph_base_bytes: float = 0.25 * GiB    # CUDA-graph memory pool
    graph_bytes_per_seq: float = 0.125 * MiB  # per captured batch slot
    act_buffers: int = 8                    # hidden-size BF16 buffers live per token in one forward
    logits_bytes: int = 4                   # FP32 logits per vocab entry per sequence
    min_max_num_tokens: int = 8192          # max_num_tokens floor (TensorRT-LLM default 8192)


CONSTANTS = MemoryConstants()


@dataclass(frozen=True)
class Workload:
    """Input and output sequence lengths in tokens (trtllm-bench ISL / OSL)."""

    isl: int
    osl: int

    def __post_init__(self) -> None:
        if self.isl < 1 or self.osl < 1:
            raise PlanError(f"ISL={self.isl} and OSL={self.osl} must both be >= 1 token")

    @property
    def seq_len(self) -> int:
        return self.isl + self.osl

    @property
    def tag(self) -> str:
        """`1k1k`-style name (the TensorRT-LLM config database convention)."""
        return f"{_k(self.isl)}{_k(self.osl)}"


def _k(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def check_workload(work: Workload, spec: ModelSpec) -> None:
    if work.seq_len > spec.max_position_embeddings:
        raise PlanError(f"ISL + OSL = {work.isl} + {work.osl} = {work.seq_len} exceeds the model's "
                        f"max_position_embeddings {spec.max_position_embeddings}; shorten the workload")


def max_num_tokens(batch_rank: int, work: Workload, c: MemoryConstants = CONSTANTS) -> int:
    """Tokens one rank's iteration may hold: a whole prompt plus every decoding sequence, rounded up to
    1024, at least the TensorRT-LLM default (no chunked prefill needed)."""
    need = work.isl + batch_rank
    return max(c.min_max_num_tokens, -(-need // 1024) * 1024)


def kv_heads_per_rank(spec: ModelSpec, lay: Layout) -> int:
    """KV heads each rank caches: split by attention TP, duplicated once TP > num_key_value_heads."""
    return -(-spec.num_key_value_heads // lay.attn_tp)


def kv_bytes_per_token(spec: ModelSpec, lay: Layout) -> int:
    """One token of one layer: K and V for kv_heads_per_rank heads of head_dim elements."""
    return 2 * kv_heads_per_rank(spec, lay) * spec.head_dim * KV_BYTES[lay.kv_dtype]


def kv_bytes_per_seq(spec: ModelSpec, lay: Layout, length: int, c: MemoryConstants = CONSTANTS) -> int:
    """Cache of one sequence of `length` tokens on one rank, all layers, rounded up to KV blocks."""
    blk = c.tokens_per_block
    full = -(-length // blk) * blk
    window = min(full, -(-spec.sliding_window // blk) * blk)
    n_slide = sum(1 for t in range(spec.num_hidden_layers) if spec.is_sliding(t))
    n_full = spec.num_hidden_layers - n_slide
    return kv_bytes_per_token(spec, lay) * (n_full * full + n_slide * window)


def weight_bytes(spec: ModelSpec, lay: Layout) -> dict[str, float]:
    """Weights held by one GPU, by component."""
    b = model_bytes(spec, lay.quant_spec.expert_format)
    kv_share = max(1 / lay.attn_tp, 1 / spec.num_key_value_heads)  # duplicated beyond kv heads
    per_layer_attn = b.q_o / lay.attn_tp + b.k_v * kv_share + b.sinks / lay.attn_tp
    local_experts = spec.num_local_experts // lay.ep
    per_layer_experts = local_experts * (b.expert_split / lay.moe_tp + b.expert_replicated)
    return {
        "attention": b.layers * per_layer_attn,
        "experts": b.layers * per_layer_experts,
        "embed_lm_head": (b.embed + b.lm_head) / lay.attn_tp,
        "norms_router_scales": b.layers * (b.replicated + b.expert_shared) + b.final_norm,
    }


def activation_bytes(spec: ModelSpec, lay: Layout, batch_rank, tokens: int,
                     c: MemoryConstants = CONSTANTS):
    """Peak forward buffers of one rank: `tokens` (max_num_tokens) through attention and MoE, plus FP32
    logits for every sequence of the batch."""
    h, i, k = spec.hidden_size, spec.intermediate_size, spec.num_experts_per_tok
    attn = tokens * 2 * (c.act_buffers * h + (spec.q_dim + 2 * spec.kv_dim) / lay.attn_tp)
    moe_tokens = tokens * lay.dp * k / lay.ep        # tokens routed to this rank's experts
    moe = moe_tokens * 2 * (h + 3 * i / lay.moe_tp)  # input, gate_up output, activation
    logits = batch_rank * spec.vocab_size * c.logits_bytes
    return attn + moe + logits


@dataclass(frozen=True)
class MemoryBreakdown:
    """Per-GPU memory of one layout at one batch (bytes), and the concurrency it leaves room for."""

    capacity: float
    weights: dict[str, float]
    activations: float
    runtime: float
    cuda_graphs: float
    free_after_load: float
    kv_budget: float
    kv_per_seq: float
    seq_len: int
    max_seqs_per_rank: int
    max_concurrency: int  # whole instance: max_seqs_per_rank x attention-DP ranks
    fits: bool

    @property
    def weights_total(self) -> float:
        return sum(self.weights.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights_total"] = self.weights_total
        d["arithmetic"] = (
            f"kv_budget {self.kv_budget / GiB:.2f} GiB = {CONSTANTS.free_gpu_memory_fraction} * "
            f"(capacity {self.capacity / GiB:.2f} - weights {self.weights_total / GiB:.2f} - activations "
            f"{self.activations / GiB:.2f} - runtime {self.runtime / GiB:.2f} - cuda graphs "
            f"{self.cuda_graphs / GiB:.2f}) GiB; max_seqs_per_rank {self.max_seqs_per_rank} = "
            f"floor(kv_budget / {self.kv_per_seq / MiB:.2f} MiB per {self.seq_len}-token sequence)")
        return d


def free_bytes(spec: ModelSpec, gpu: GpuSpec, lay: Layout, batch_rank, work: Workload,
               c: MemoryConstants = CONSTANTS):
    """(free bytes after weights, activations and reserves; KV budget), vectorized over batch_rank."""
    tokens = np.maximum(c.min_max_num_tokens, -(-(work.isl + np.asarray(batch_rank)) // 1024) * 1024)
    weights = sum(weight_bytes(spec, lay).values())
    act = activation_bytes(spec, lay, batch_rank, tokens, c)
    graphs = c.graph_base_bytes + c.graph_bytes_per_seq * np.asarray(batch_rank)
    free = gpu.memory_bytes - weights - act - c.runtime_bytes - graphs
    return free, np.maximum(free, 0.0) * c.free_gpu_memory_fraction


def max_seqs_per_rank(spec: ModelSpec, gpu: GpuSpec, lay: Layout, batch_rank, work: Workload):
    """Sequences of ISL + OSL tokens whose KV cache fits on one rank (vectorized over batch_rank)."""
    _, budget = free_bytes(spec, gpu, lay, batch_rank, work)
    return np.floor(budget / kv_bytes_per_seq(spec, lay, work.seq_len)).astype(np.int64)


def memory_breakdown(spec: ModelSpec, gpu: GpuSpec, lay: Layout, batch_rank: int, work: Workload,
                     c: MemoryConstants = CONSTANTS) -> MemoryBreakdown:
    tokens = max_num_tokens(batch_rank, work, c)
    weights = weight_bytes(spec, lay)
    act = float(activation_bytes(spec, lay, batch_rank, tokens, c))
    graphs = c.graph_base_bytes + c.graph_bytes_per_seq * batch_rank
    free, budget = free_bytes(spec, gpu, lay, batch_rank, work, c)
    per_seq = kv_bytes_per_seq(spec, lay, work.seq_len, c)
    seqs = int(budget // per_seq)
    return MemoryBreakdown(capacity=gpu.memory_bytes, weights=weights, activations=act,
                           runtime=c.runtime_bytes, cuda_graphs=graphs, free_after_load=float(free),
                           kv_budget=float(budget), kv_per_seq=per_seq, seq_len=work.seq_len,
                           max_seqs_per_rank=seqs, max_concurrency=seqs * lay.dp,
                           fits=bool(seqs >= 1 and free > 0))
