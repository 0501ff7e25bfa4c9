"""Loading one decoder layer (or the embeddings/head) of a checkpoint for the reference runtime.

Dense tensors (attention, norms, router, embeddings) are cast to the compute dtype at load. Expert
weights stay in their stored format (BF16, MXFP4 or NVFP4) and are decoded one expert at a time by
`plugins.moe` during the forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from builder.checkpoint import Checkpoint
from builder.errors import TrtkitError
from builder.layout import ExpertFormat, experts_prefix, layer_prefix, projections
from plugins.moe import Bf16Experts, ExpertProjection, ExpertWeights, Mxfp4Experts, Nvfp4Experts, Router


class RuntimeModeError(TrtkitError):
    """A runtime option does not fit the checkpoint (e.g. W4A4 emulation without input scales)."""


@dataclass(frozen=True)
class AttentionWeights:
    q_w: torch.Tensor  # [Hq*D, H]
    q_b: torch.Tensor  # [Hq*D]
    k_w: torch.Tensor  # [Hkv*D, H]
    k_b: torch.Tensor  # [Hkv*D]
    v_w: torch.Tensor  # [Hkv*D, H]
    v_b: torch.Tensor  # [Hkv*D]
    o_w: torch.Tensor  # [H, Hq*D]
    o_b: torch.Tensor  # [H]
    sinks: torch.Tensor  # [Hq]


@dataclass(frozen=True)
class LayerWeights:
    input_norm: torch.Tensor  # [H]
    post_norm: torch.Tensor   # [H]
    attn: AttentionWeights
    router: Router
    experts: ExpertWeights


@dataclass(frozen=True)
class HeadWeights:
    """After the decoder layers: final norm and lm_head, in the compute dtype."""

    norm: torch.Tensor     # [H]
    lm_head: torch.Tensor  # [V, H]


ATTENTION_TENSORS = {  # field -> tensor name under model.layers.N.self_attn.
    "q_w": "q_proj.weight", "q_b": "q_proj.bias", "k_w": "k_proj.weight", "k_b": "k_proj.bias",
    "v_w": "v_proj.weight", "v_b": "v_proj.bias", "o_w": "o_proj.weight", "o_b": "o_proj.bias",
    "sinks": "sinks",
}


def _load_bf16(ckpt: Checkpoint, base: str, act_scale: bool) -> ExpertProjection:
    return Bf16Experts(ckpt.load(base))


def _load_mxfp4(ckpt: Checkpoint, base: str, act_scale: bool) -> ExpertProjection:
    return Mxfp4Experts(ckpt.load(f"{base}_blocks"), ckpt.load(f"{base}_scales"))


def _load_nvfp4(ckpt: Checkpoint, base: str, act_scale: bool) -> ExpertProjection:
    return Nvfp4Experts(ckpt.load(base), ckpt.load(f"{base}_weight_scale"),
                        ckpt.load(f"{base}_weight_scale_2"),
                        ckpt.load(f"{base}_input_scale") if act_scale else None)


EXPERT_LOADERS: dict[ExpertFormat, Callable[[Checkpoint, str, bool], ExpertProjection]] = {
    ExpertFormat.BF16: _load_bf16,
    ExpertFormat.MXFP4: _load_mxfp4,
    ExpertFormat.NVFP4: _load_nvfp4,
}


def has_input_scales(ckpt: Checkpoint) -> bool:
    return any(name.endswith("_input_scale") for name in ckpt.weight_map)


def check_emulate_w4a4(ckpt: Checkpoint) -> None:
    """W4A4 emulation needs an NVFP4 checkpoint with activation `_input_scale` tensors."""
    if ckpt.expert_format is not ExpertFormat.NVFP4:
        raise RuntimeModeError(f"{ckpt.folder}: --emulate-w4a4 needs an NVFP4 checkpoint, this one holds "
                               f"{ckpt.expert_format.value} experts; convert it first or drop the flag")
    if not has_input_scales(ckpt):
        raise RuntimeModeError(f"{ckpt.folder}: --emulate-w4a4 needs activation input scales, but this NVFP4 "
                               "checkpoint is weights-only (no *_input_scale tensors); convert with "
                               "calibrated input scales or drop the flag")
    for name in sorted(n for n in ckpt.weight_map if n.endswith("_input_scale")):
        ckpt.load(name)  # scalars: checked now (finite, > 0), before any forward runs


def load_layer(ckpt: Checkpoint, layer: int, dtype: torch.dtype, emulate_w4a4: bool = False
               ) -> LayerWeights:
    """Every tensor of decoder layer `layer`: dense ones in `dtype`, experts as stored."""
    p = layer_prefix(layer)

    def dense(name: str) -> torch.Tensor:
        return ckpt.load(name).to(dtype)

    attn = AttentionWeights(**{f: dense(f"{p}.self_attn.{n}") for f, n in ATTENTION_TENSORS.items()})
    load_proj = EXPERT_LOADERS[ckpt.expert_format]
    proj = {}
    for pr in projections(ckpt.spec):
        base = f"{experts_prefix(layer)}.{pr.name}"
        proj[pr.name] = (load_proj(ckpt, base, emulate_w4a4), ckpt.load(f"{base}_bias"))
    experts = ExpertWeights(gate_up=proj["gate_up_proj"][0], gate_up_bias=proj["gate_up_proj"][1],
                            down=proj["down_proj"][0], down_bias=proj["down_proj"][1])
    return LayerWeights(input_norm=dense(f"{p}.input_layernorm.weight"),
                        post_norm=dense(f"{p}.post_attention_layernorm.weight"), attn=attn,
                        router=Router(dense(f"{p}.mlp.router.weight"), dense(f"{p}.mlp.router.bias")),
                        experts=experts)


def load_embed(ckpt: Checkpoint) -> torch.Tensor:
    """[V, H] as stored (BF16): rows are gathered first, then cast to the compute dtype."""
    return ckpt.load("model.embed_tokens.weight")


def load_head(ckpt: Checkpoint, dtype: torch.dtype) -> HeadWeights:
    """Final norm and lm_head in `dtype` (tied embeddings reuse embed_tokens)."""
    name = "model.embed_tokens.weight" if ckpt.spec.tie_word_embeddings else "lm_head.weight"
    return HeadWeights(norm=ckpt.load("model.norm.weight").to(dtype), lm_head=ckpt.load(name).to(dtype))
