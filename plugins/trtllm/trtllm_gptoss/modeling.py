"""TensorRT-LLM's gpt-oss with the MoE module replaced by `plugins.moe_layer.TrtkitMoE` (NVFP4 on Hopper).
Written against TensorRT-LLM's PyTorch-backend model API (`register_auto_model`,
`modeling_gpt_oss.GptOssForCausalLM`, whose MLP block builds its experts through the module-level name
`create_moe` and calls them as `experts(x=..., router_logits=...)` expecting [N, H] back, and whose loader
hands a module that is not its own MoE class the checkpoint tensors untouched through
`load_weights(weights=[tensors])`)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from tensorrt_llm._torch.models import modeling_gpt_oss
from tensorrt_llm._torch.models.modeling_utils import register_auto_model

from plugins.moe_layer import TrtkitMoE
from plugins.trtllm import STORAGE_ARGS, STORAGE_ENV, STORAGES

# checkpoint quant_algo values whose experts TrtkitMoE serves (TensorRT-LLM's QuantAlgo names: a Model
# Optimizer NVFP4 export says NVFP4; W4A16_NVFP4 is the weight-only name of the same tensors)
QUANT_ALGOS = ("NVFP4", "W4A16_NVFP4")


def _experts_factory(**moe_params) -> TrtkitMoE:
    """Stands in for modeling_gpt_oss.create_moe while the model is built."""
    config = moe_params["model_config"]
    mapping, cfg = config.mapping, config.pretrained_config
    if mapping.world_size != 1:
        raise ValueError(f"trtkit MoE plugin: one GPU per model instance (world size {mapping.world_size}); "
                         "serve more replicas, or drop --custom_module_dirs to use TensorRT-LLM's MoE")
    storage = os.environ.get(STORAGE_ENV, STORAGES[0])  # auto: TrtkitMoE's choice (frag on Hopper, else spread)
    if storage not in STORAGES:
        raise ValueError(f"{STORAGE_ENV}={storage!r} must be one of {STORAGES}")
    spread, frag = STORAGE_ARGS[storage]
    return TrtkitMoE(moe_params["num_experts"], moe_params["hidden_size"], moe_params["intermediate_size"],
                     cfg.num_experts_per_tok, float(getattr(cfg, "swiglu_limit", 7.0)),
                     float(getattr(cfg, "swiglu_alpha", 1.702)),
                     spread=spread, frag=frag)


@contextmanager
def _building_with(factory):
    """modeling_gpt_oss builds its MoE through the module-level name create_moe: point that name at
    the factory while one model is constructed, then restore it."""
    original = modeling_gpt_oss.create_moe
    modeling_gpt_oss.create_moe = factory
    try:
        yield
    finally:
        modeling_gpt_oss.create_moe = original


def _wants_trtkit(model_config) -> bool:
    algo = getattr(model_config.quant_config, "quant_algo", None)
    return torch.cuda.get_device_capability()[0] == 9 and str(getattr(algo, "value", algo)) in QUANT_ALGOS


@register_auto_model("GptOssForCausalLM")
class TrtkitGptOssForCausalLM(modeling_gpt_oss.GptOssForCausalLM):
    def __init__(self, model_config):
        if not _wants_trtkit(model_config):
            super().__init__(model_config)
            return
        with _building_with(_experts_factory):
            super().__init__(model_config)
