"""TensorRT-LLM's gpt-oss with the MoE module replaced by `TrtkitMoE` (NVFP4 on Hopper). Written against
TensorRT-LLM's PyTorch-backend model API (`register_auto_model`, `modeling_gpt_oss.GptOssForCausalLM`,
whose MLP block calls `experts(x=..., router_logits=...)` and whose loader hands each module without a
MoE type its checkpoint tensors through `load_weights([tensors])`)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from tensorrt_llm._torch.models import modeling_gpt_oss
from tensorrt_llm._torch.models.modeling_utils import register_auto_model

import plugins.ops  # noqa: F401  (registers torch.ops.trtkit.moe)
from plugins.moe.tensors import MoeTensors, ProjectionTensors, WeightFormat

PROJECTIONS = ("gate_up_proj", "down_proj")


class TrtkitMoE(torch.nn.Module):
    """All experts of one layer in the checkpoint's NVFP4 tensors, kept input-fastest on the GPU (the
    layout the kernel decodes fastest); forward(x [N, H], router_logits [N, E]) -> [N, H]."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, top_k: int, limit: float,
                 alpha: float):
        super().__init__()
        self.top_k, self.limit, self.alpha = top_k, limit, alpha
        shapes = {"gate_up_proj": (hidden, 2 * intermediate), "down_proj": (intermediate, hidden)}
        for name, (n_in, n_out) in shapes.items():  # storage [E, out, in/2]: logical [E, in/2, out] = .mT
            self._param(name, (num_experts, n_out, n_in // 2), torch.uint8)
            self._param(f"{name}_weight_scale", (num_experts, n_out, n_in // 16), torch.float8_e4m3fn)
            self._param(f"{name}_weight_scale_2", (), torch.float32)
            self._param(f"{name}_bias", (num_experts, n_out), torch.bfloat16)

    def _param(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.register_parameter(name, torch.nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False))

    def load_weights(self, weights: list[dict]) -> None:
        """weights[0]: this layer's `mlp.experts.*` tensors, names as in the NVFP4 checkpoint."""
        w = weights[0]
        for name in PROJECTIONS:
            for suffix, k_major in (("", True), ("_weight_scale", True), ("_weight_scale_2", False),
                                    ("_bias", False)):
                src = torch.as_tensor(w[name + suffix][:])
                p = getattr(self, name + suffix)
                p.data = (src.mT.contiguous() if k_major else src).to(p.dtype).to(p.device)

    def _tensors(self) -> MoeTensors:
        proj = {n: ProjectionTensors(WeightFormat.NVFP4, getattr(self, n).mT,
                                     getattr(self, f"{n}_weight_scale").mT, getattr(self, f"{n}_weight_scale_2"))
                for n in PROJECTIONS}
        return MoeTensors(proj["gate_up_proj"], self.gate_up_proj_bias, proj["down_proj"], self.down_proj_bias)

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor, **_: object) -> torch.Tensor:
        args = plugins.ops.moe_op_args(self._tensors())
        return torch.ops.trtkit.moe(x, router_logits.to(x.dtype), *args, self.top_k, self.limit, self.alpha)


def _experts_factory(**moe_params) -> TrtkitMoE:
    """Stands in for modeling_gpt_oss.create_moe while the model is built."""
    config = moe_params["model_config"]
    mapping, cfg = config.mapping, config.pretrained_config
    if mapping.world_size != 1:
        raise ValueError(f"trtkit MoE plugin: one GPU per model instance (world size {mapping.world_size}); "
                         "serve more replicas, or drop --custom_module_dirs to use TensorRT-LLM's MoE")
    return TrtkitMoE(moe_params["num_experts"], moe_params["hidden_size"], moe_params["intermediate_size"],
                     cfg.num_experts_per_tok, float(getattr(cfg, "swiglu_limit", 7.0)),
                     float(getattr(cfg, "swiglu_alpha", 1.702)))


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
    return torch.cuda.get_device_capability()[0] == 9 and str(getattr(algo, "value", algo)) == "NVFP4"


@register_auto_model("GptOssForCausalLM")
class TrtkitGptOssForCausalLM(modeling_gpt_oss.GptOssForCausalLM):
    def __init__(self, model_config):
        if not _wants_trtkit(model_config):
            super().__init__(model_config)
            return
        with _building_with(_experts_factory):
            super().__init__(model_config)
