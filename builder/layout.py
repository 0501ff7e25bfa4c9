"""The tensor tables: every tensor a gpt-oss checkpoint holds, by expert format, in canonical order.

Conversion is data: the converter walks these tables, and strict accounting compares them with what a
folder really holds (every missing and every unexpected name is reported).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import torch

from builder.spec import MX_BLOCK, ModelSpec

NV_BLOCK = 16  # NVFP4 block along the input dimension
BF16, U8, F32, E4M3 = torch.bfloat16, torch.uint8, torch.float32, torch.float8_e4m3fn


class ExpertFormat(str, Enum):
    """How the MoE expert weights of a checkpoint are stored."""

    MXFP4 = "mxfp4"  # the Hugging Face release: `_blocks` + `_scales`, [E, out, in/32, 16]
    BF16 = "bf16"    # what transformers saves unquantized: [E, in, out]
    NVFP4 = "nvfp4"  # Model Optimizer unified layout: packed [E, in/2, out] + E4M3 scales


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Projection:
    """One fused expert projection: `gate_up_proj` (H -> 2I, interleaved) or `down_proj` (I -> H)."""

    name: str
    in_features: int
    out_features: int


def projections(spec: ModelSpec) -> tuple[Projection, Projection]:
    h, i = spec.hidden_size, spec.intermediate_size
    return Projection("gate_up_proj", h, 2 * i), Projection("down_proj", i, h)


def layer_prefix(layer: int) -> str:
    return f"model.layers.{layer}"


def experts_prefix(layer: int) -> str:
    return f"{layer_prefix(layer)}.mlp.experts"


def dense_layer_tensors(spec: ModelSpec, layer: int) -> list[TensorSpec]:
    """The BF16 tensors of one decoder layer (attention, norms, router)."""
    p, h, e = layer_prefix(layer), spec.hidden_size, spec.num_local_experts
    rows = [
        (f"{p}.input_layernorm.weight", (h,)),
        (f"{p}.post_attention_layernorm.weight", (h,)),
        (f"{p}.self_attn.q_proj.weight", (spec.q_dim, h)),
        (f"{p}.self_attn.q_proj.bias", (spec.q_dim,)),
        (f"{p}.self_attn.k_proj.weight", (spec.kv_dim, h)),
        (f"{p}.self_attn.k_proj.bias", (spec.kv_dim,)),
        (f"{p}.self_attn.v_proj.weight", (spec.kv_dim, h)),
        (f"{p}.self_attn.v_proj.bias", (spec.kv_dim,)),
        (f"{p}.self_attn.o_proj.weight", (h, spec.q_dim)),
        (f"{p}.self_attn.o_proj.bias", (h,)),
        (f"{p}.self_attn.sinks", (spec.num_attention_heads,)),
        (f"{p}.mlp.router.weight", (e, h)),
        (f"{p}.mlp.router.bias", (e,)),
    ]
    return [TensorSpec(n, BF16, s) for n, s in rows]


def expert_tensors(spec: ModelSpec, layer: int, fmt: ExpertFormat, with_input_scale: bool = False
                   ) -> list[TensorSpec]:
    """The expert tensors of one layer in format `fmt` (biases are BF16 in every format)."""
    p, e = experts_prefix(layer), spec.num_local_experts
    out: list[TensorSpec] = []
    for proj in projections(spec):
        base, k, n = f"{p}.{proj.name}", proj.in_features, proj.out_features
        if fmt is ExpertFormat.MXFP4:
            out += [TensorSpec(f"{base}_blocks", U8, (e, n, k // MX_BLOCK, 16)),   # [E, out, in/32, 16]
                    TensorSpec(f"{base}_scales", U8, (e, n, k // MX_BLOCK))]       # [E, out, in/32]
        elif fmt is ExpertFormat.BF16:
            out += [TensorSpec(base, BF16, (e, k, n))]                              # [E, in, out]
        else:
            out += [TensorSpec(base, U8, (e, k // 2, n)),                           # [E, in/2, out]
                    TensorSpec(f"{base}_weight_scale", E4M3, (e, k // NV_BLOCK, n)),  # [E, in/16, out]
                    TensorSpec(f"{base}_weight_scale_2", F32, ())]
            if with_input_scale:
                out.append(TensorSpec(f"{base}_input_scale", F32, ()))
        out.append(TensorSpec(f"{base}_bias", BF16, (e, n)))                        # [E, out]
    return out


def checkpoint_tensors(spec: ModelSpec, fmt: ExpertFormat, with_input_scale: bool = False
                       ) -> list[TensorSpec]:
    """Every tensor of a gpt-oss checkpoint, layer by layer (the order the converter streams in)."""
    h, v = spec.hidden_size, spec.vocab_size
    out = [TensorSpec("model.embed_tokens.weight", BF16, (v, h))]
    for layer in range(spec.num_hidden_layers):
        out += dense_layer_tensors(spec, layer)
        out += expert_tensors(spec, layer, fmt, with_input_scale)
    out.append(TensorSpec("model.norm.weight", BF16, (h,)))
    if not spec.tie_word_embeddings:
        out.append(TensorSpec("lm_head.weight", BF16, (v, h)))
    return out


def layer_of(name: str) -> int | None:
    """Layer index of a tensor name, or None for the embeddings, final norm and lm_head."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit():
        return int(parts[2])
    return None


def iter_layers(tensors: list[TensorSpec]) -> Iterator[tuple[int | None, list[TensorSpec]]]:
    """Group consecutive tensors by layer."""
    group: list[TensorSpec] = []
    current: int | None = -1
    for t in tensors:
        layer = layer_of(t.name)
        if group and layer != current:
            yield current, group
            group = []
        current = layer
        group.append(t)
    if group:
        yield current, group
