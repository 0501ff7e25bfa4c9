"""The model side of a plan: which gpt-oss, and exact byte counts from the checkpoint tensor tables.

A model is a built-in name (`builder.synth.SHAPES`, e.g. "gpt-oss-120b") or a checkpoint folder with its
own config.json. Byte counts come from `builder.layout` (the same tables the converter writes), so the
memory model and the checkpoint on disk cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from builder.layout import ExpertFormat, TensorSpec, checkpoint_tensors, dense_layer_tensors, expert_tensors
from builder.manifest import MANIFEST_NAME, listing_checksum, manifest_files
from builder.spec import ModelSpec
from builder.synth import SHAPES
from recipes.errors import PlanError

HF_IDS = {"gpt-oss-20b": "openai/gpt-oss-20b", "gpt-oss-120b": "openai/gpt-oss-120b"}


@dataclass(frozen=True)
class ModelRef:
    """A model to plan for: its spec, how to name it, and the checkpoint it came from (when a folder)."""

    name: str
    spec: ModelSpec
    hf_id: str | None = None
    path: str | None = None
    checkpoint_hash: str | None = None   # sha256 over the folder's file listing (trtkit manifest)
    folder_format: str | None = None     # "nvfp4" (trtkit bundle), "mxfp4" (release), "bf16", or unknown


def resolve_model(name_or_dir: str) -> ModelRef:
    """A built-in shape name or a gpt-oss checkpoint folder."""
    if name_or_dir in SHAPES:
        return ModelRef(name=name_or_dir, spec=SHAPES[name_or_dir].spec(), hf_id=HF_IDS.get(name_or_dir))
    folder = Path(name_or_dir)
    if not folder.is_dir():
        raise PlanError(f"--model {name_or_dir!r} is neither a built-in model ({', '.join(sorted(SHAPES))}) "
                        f"nor a checkpoint folder with a config.json")
    spec = ModelSpec.from_dir(folder)
    return ModelRef(name=folder.resolve().name, spec=spec, path=str(folder.resolve()),
                    checkpoint_hash=_manifest_checksum(folder), folder_format=_folder_format(spec))


def _manifest_checksum(folder: Path) -> str | None:
    """sha256 over the file listing of a trtkit manifest; None for a folder without one (never hashed
    here: reading a 60 GB checkpoint takes minutes)."""
    path = folder / MANIFEST_NAME
    return listing_checksum(manifest_files(path, PlanError)) if path.is_file() else None


def _folder_format(spec: ModelSpec) -> str | None:
    """What the folder's own config.json says its experts are."""
    q = spec.raw_config.get("quantization_config") or {}
    method, algo = q.get("quant_method"), q.get("quant_algo")
    if method == "mxfp4":
        return "mxfp4"
    if method == "modelopt" and algo == "NVFP4":
        return "nvfp4"
    return "bf16" if not q else None


def _total(tensors: list[TensorSpec], suffixes: tuple[str, ...]) -> int:
    return sum(t.nbytes for t in tensors if t.name.endswith(suffixes))


@dataclass(frozen=True)
class ModelBytes:
    """Bytes of one checkpoint by how they split over GPUs (per layer unless named otherwise)."""

    q_o: int              # q_proj + o_proj weights and biases: split by attention TP
    k_v: int              # k_proj + v_proj weights and biases: split by TP up to num_key_value_heads
    sinks: int            # one logit per attention head
    replicated: int       # RMSNorm weights + router weight/bias: every rank holds them
    expert_split: int     # ONE expert: weights, block scales, gate_up bias (split by MoE TP)
    expert_replicated: int  # ONE expert: down_proj bias (each MoE-TP rank holds all of it)
    expert_shared: int    # per layer, shared by all experts: 0-d global/input scales
    embed: int            # whole model
    lm_head: int          # whole model
    final_norm: int       # whole model
    layers: int
    num_experts: int

    @property
    def expert(self) -> int:
        return self.expert_split + self.expert_replicated

    @property
    def total(self) -> int:
        per_layer = self.q_o + self.k_v + self.sinks + self.replicated + self.expert_shared
        return (self.layers * per_layer + self.embed + self.lm_head + self.final_norm
                + self.layers * self.num_experts * self.expert)


@cache
def model_bytes(spec: ModelSpec, fmt: ExpertFormat) -> ModelBytes:
    """Exact bytes from the tensor tables of layer 0 (every layer has the same tensors)."""
    dense = dense_layer_tensors(spec, 0)
    experts = expert_tensors(spec, 0, fmt, with_input_scale=fmt is ExpertFormat.NVFP4)
    whole = {t.name: t.nbytes for t in checkpoint_tensors(spec, fmt) if not t.name.startswith("model.layers.")}
    e = spec.num_local_experts
    per_expert = [t for t in experts if t.shape]          # [E, ...] tensors
    shared = [t for t in experts if not t.shape]          # 0-d scales
    down_bias = _total(per_expert, ("down_proj_bias",))
    return ModelBytes(
        q_o=_total(dense, ("q_proj.weight", "q_proj.bias", "o_proj.weight", "o_proj.bias")),
        k_v=_total(dense, ("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias")),
        sinks=_total(dense, ("sinks",)),
        replicated=_total(dense, ("layernorm.weight", "router.weight", "router.bias")),
        expert_split=(sum(t.nbytes for t in per_expert) - down_bias) // e,
        expert_replicated=down_bias // e,
        expert_shared=sum(t.nbytes for t in shared),
        embed=whole["model.embed_tokens.weight"],
        lm_head=whole.get("lm_head.weight", 0),
        final_norm=whole["model.norm.weight"],
        layers=spec.num_hidden_layers,
        num_experts=e,
    )


@dataclass(frozen=True)
class ModelFlops:
    """Multiply-accumulate parameters touched per token (FLOPs = 2 x params x tokens)."""

    attn_params: int     # per layer: q, k, v, o projections
    router_params: int   # per layer
    expert_params: int   # per expert per layer: gate_up (H x 2I) + down (I x H)
    lm_head_params: int  # whole model


@cache
def model_flops(spec: ModelSpec) -> ModelFlops:
    h, i = spec.hidden_size, spec.intermediate_size
    return ModelFlops(attn_params=h * (2 * spec.q_dim + 2 * spec.kv_dim),
                      router_params=h * spec.num_local_experts,
                      expert_params=h * 2 * i + i * h,
                      lm_head_params=h * spec.vocab_size)
