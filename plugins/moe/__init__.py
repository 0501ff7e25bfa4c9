"""gpt-oss mixture of experts: routing, SwiGLU and expert weights in BF16/MXFP4/NVFP4 (reference)."""

from plugins.moe.experts import (
    Bf16Experts,
    ExpertProjection,
    ExpertWeights,
    Mxfp4Experts,
    Nvfp4Experts,
    Router,
    fake_quant_nvfp4,
)
from plugins.moe.reference import ExpertInputHook, expert_mlp, moe, route, swiglu

__all__ = ["Bf16Experts", "ExpertInputHook", "ExpertProjection", "ExpertWeights", "Mxfp4Experts",
           "Nvfp4Experts", "Router", "expert_mlp", "fake_quant_nvfp4", "moe", "route", "swiglu"]
