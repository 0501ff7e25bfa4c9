"""The quantization metadata of an NVFP4 gpt-oss checkpoint, in Model Optimizer's unified format.

`hf_quant_config.json` (which TensorRT-LLM reads first) and `config.json`'s inline
`quantization_config` are both derived from one `QuantScheme`, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from builder.spec import ModelSpec

NVFP4_GROUP_SIZE = 16
MODELOPT_VERSION = "0.47.0"  # the Model Optimizer release whose export format we reproduce


@dataclass(frozen=True)
class Scope:
    """Which modules become NVFP4. For gpt-oss, Model Optimizer's `nvfp4_mlp_only` and
    `nvfp4_experts_only` quantize exactly the same tensors (the MoE is the MLP; its router stays BF16,
    and TensorRT-LLM assumes exactly that split), so both scopes produce identical weights."""

    name: str
    modelopt_config: str
    description: str


SCOPES: dict[str, Scope] = {
    "experts": Scope("experts", "NVFP4_EXPERTS_ONLY_CFG", "MoE expert weights NVFP4; everything else BF16"),
    "mlp": Scope("mlp", "NVFP4_MLP_ONLY_CFG", "MLP (= MoE experts for gpt-oss) NVFP4; router, "
                 "attention, embeddings, lm_head BF16"),
}


def exclude_modules(spec: ModelSpec) -> list[str]:
    """Every module left in BF16, as Model Optimizer lists them (sorted as strings)."""
    names = ["lm_head", "model.embed_tokens"]
    for layer in range(spec.num_hidden_layers):
        names += [f"model.layers.{layer}.mlp.router", f"model.layers.{layer}.self_attn*"]
    return sorted(names)


def hf_quant_config(spec: ModelSpec) -> dict[str, Any]:
    return {
        "producer": {"name": "modelopt", "version": MODELOPT_VERSION},
        "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None,
                         "group_size": NVFP4_GROUP_SIZE, "exclude_modules": exclude_modules(spec)},
    }


def inline_quantization_config(spec: ModelSpec) -> dict[str, Any]:
    """`config.json`'s `quantization_config`: the compressed-tensors style block Model Optimizer writes."""
    fp4 = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": NVFP4_GROUP_SIZE}
    return {
        "config_groups": {"group_0": {"input_activations": {**fp4}, "weights": {**fp4},
                                      "targets": ["Linear"]}},
        "ignore": exclude_modules(spec),
        "quant_algo": "NVFP4",
        "producer": {"name": "modelopt", "version": MODELOPT_VERSION},
        "quant_method": "modelopt",
    }
