"""What runs where: expert quantization, MoE backends and KV-cache dtypes per GPU architecture.

One table per concern (sources: shared/reference/gpt-oss.md "Serving facts", formats.md "Quantization
names"). Hopper has no FP4 tensor cores: it serves the MXFP4 source checkpoint as W4A16_MXFP4
(weights dequantized to BF16 inside the GEMM), or the trtkit NVFP4 checkpoint as W4A16_NVFP4 through
the trtkit::moe plugin (backend TRTKIT: `plugins/trtllm`, one GPU per instance), so a mixed fleet can
serve one NVFP4 checkpoint everywhere. Blackwell serves the NVFP4 checkpoint as W4A4 (`NVFP4`) or the
MXFP4 source as W4A8_MXFP4_MXFP8.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from builder.layout import ExpertFormat
from recipes.hardware import Arch, Compute


class QuantAlgo(str, Enum):
    """TensorRT-LLM `QuantAlgo` of the MoE experts (everything else stays BF16)."""

    W4A16_MXFP4 = "W4A16_MXFP4"
    W4A8_MXFP4_MXFP8 = "W4A8_MXFP4_MXFP8"
    NVFP4 = "NVFP4"  # W4A4
    W4A16_NVFP4 = "W4A16_NVFP4"  # NVFP4 weights, BF16 activations (Hopper, trtkit::moe)


class MoeBackend(str, Enum):
    """`moe_config.backend`."""

    CUTLASS = "CUTLASS"
    TRTLLM = "TRTLLM"
    TRITON = "TRITON"  # expert parallel only; deprecated from TensorRT-LLM 1.3
    TRTKIT = "TRTKIT"  # trtkit::moe via the out-of-tree model (plugins/trtllm), not a moe_config value

    @property
    def is_plugin(self) -> bool:
        """Not a TensorRT-LLM moe_config.backend: the options YAML leaves moe_config out and the serve
        command loads the plugin (`--custom_module_dirs`)."""
        return self in PLUGIN_BACKENDS


class KvDtype(str, Enum):
    """`kv_cache_config.dtype`: fp8, or auto (= the model dtype, BF16)."""

    FP8 = "fp8"
    AUTO = "auto"


class Checkpoint(str, Enum):
    """The folder a recipe serves."""

    NVFP4 = "nvfp4"  # `trtkit convert --calibrate` output (Model Optimizer unified layout, input_scale set)
    MXFP4 = "mxfp4"  # the Hugging Face release as published


@dataclass(frozen=True)
class QuantSpec:
    algo: QuantAlgo
    checkpoint: Checkpoint
    expert_format: ExpertFormat  # which tensor table (builder.layout) gives the expert bytes
    compute: Compute             # tensor-core precision of the expert GEMMs
    act_bytes: float             # bytes per expert activation element moved between GPUs (EP dispatch)
    note: str


QUANTS: dict[QuantAlgo, QuantSpec] = {
    QuantAlgo.W4A16_MXFP4: QuantSpec(QuantAlgo.W4A16_MXFP4, Checkpoint.MXFP4, ExpertFormat.MXFP4,
                                     Compute.BF16, 2.0, "MXFP4 weights dequantized to BF16 in the GEMM"),
    QuantAlgo.W4A8_MXFP4_MXFP8: QuantSpec(QuantAlgo.W4A8_MXFP4_MXFP8, Checkpoint.MXFP4, ExpertFormat.MXFP4,
                                          Compute.FP8, 1.0 + 1 / 32, "MXFP4 weights, MXFP8 activations"),
    QuantAlgo.NVFP4: QuantSpec(QuantAlgo.NVFP4, Checkpoint.NVFP4, ExpertFormat.NVFP4, Compute.FP4,
                               0.5 + 1 / 16, "NVFP4 weights and activations (W4A4), FP4 tensor cores"),
    QuantAlgo.W4A16_NVFP4: QuantSpec(QuantAlgo.W4A16_NVFP4, Checkpoint.NVFP4, ExpertFormat.NVFP4, Compute.BF16,
                                     2.0, "NVFP4 weights decoded to BF16 in the trtkit::moe Triton kernel"),
}

PLUGIN_BACKENDS = (MoeBackend.TRTKIT,)

# the expert precisions each backend serves (TensorRT-LLM has no NVFP4 MoE for gpt-oss's SwiGLU on
# Hopper, so W4A16_NVFP4 is trtkit's alone, and trtkit's MoE serves nothing else)
BACKEND_QUANTS: dict[MoeBackend, tuple[QuantAlgo, ...]] = {
    MoeBackend.TRITON: (QuantAlgo.W4A16_MXFP4,),
    MoeBackend.CUTLASS: (QuantAlgo.W4A16_MXFP4, QuantAlgo.NVFP4, QuantAlgo.W4A8_MXFP4_MXFP8),
    MoeBackend.TRTLLM: (QuantAlgo.NVFP4, QuantAlgo.W4A8_MXFP4_MXFP8),
    MoeBackend.TRTKIT: (QuantAlgo.W4A16_NVFP4,),
}

KV_BYTES: dict[KvDtype, int] = {KvDtype.FP8: 1, KvDtype.AUTO: 2}  # bytes per cached K or V element


@dataclass(frozen=True)
class ArchPrecision:
    """The choices one architecture allows; the first of each tuple is the default."""

    quants: tuple[QuantAlgo, ...]
    backends: tuple[MoeBackend, ...]
    kv_dtypes: tuple[KvDtype, ...]
    ep_only_backends: tuple[MoeBackend, ...] = ()  # backends that need MoE TP = 1
    single_gpu_backends: tuple[MoeBackend, ...] = ()  # backends that need tensor_parallel_size = 1


ARCH_PRECISION: dict[Arch, ArchPrecision] = {
    Arch.HOPPER: ArchPrecision(quants=(QuantAlgo.W4A16_MXFP4, QuantAlgo.W4A16_NVFP4),
                               backends=(MoeBackend.TRITON, MoeBackend.CUTLASS, MoeBackend.TRTKIT),
                               kv_dtypes=(KvDtype.FP8, KvDtype.AUTO),
                               ep_only_backends=(MoeBackend.TRITON,),
                               single_gpu_backends=(MoeBackend.TRTKIT,)),
    Arch.BLACKWELL: ArchPrecision(quants=(QuantAlgo.NVFP4, QuantAlgo.W4A8_MXFP4_MXFP8),
                                  backends=(MoeBackend.TRTLLM, MoeBackend.CUTLASS),
                                  kv_dtypes=(KvDtype.FP8, KvDtype.AUTO)),
}

# trtkit::moe on H100 relative to the model's TRITON prediction: the median over the 8 MoE decode points
# of BENCHMARKS.md (graph-timed, batch 1/8/32/128, 120b and 20b layers, frag storage: the Gluon GEMM the plugin
# serves with on Hopper, measured 2026-11-23) of predicted / measured per-layer time;
# tests/test_recipes_trtkit.py recomputes it from that table.
TRTKIT_SPEED = 1.75

# Relative speed of the MoE kernels by backend (a prior, not fitted: the published points were measured
# with the first backend of each architecture, which the calibration absorbs as 1.0). TensorRT-LLM's
# gpt-oss deployment guide recommends TRITON on Hopper and TRTLLM on Blackwell; the CUTLASS paths run
# the same arithmetic with less tuned kernels for these shapes.
BACKEND_SPEED: dict[tuple[Arch, MoeBackend], float] = {
    (Arch.HOPPER, MoeBackend.TRITON): 1.0,
    (Arch.HOPPER, MoeBackend.CUTLASS): 0.85,
    (Arch.HOPPER, MoeBackend.TRTKIT): TRTKIT_SPEED,
    (Arch.BLACKWELL, MoeBackend.TRTLLM): 1.0,
    (Arch.BLACKWELL, MoeBackend.CUTLASS): 0.95,
}
