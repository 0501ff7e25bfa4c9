"""Expert weights of one MoE layer in any stored format, decoded ONE expert at a time on demand.

Every projection type answers `expert(e, dtype) -> [in, out]` (contiguous, so the matmul that follows
does not depend on the storage layout) and `prepare_input(x)`, which is the identity except for NVFP4
with an activation scale (W4A4 emulation: x is rounded through NVFP4 first, as TensorRT-LLM does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from plugins.formats.mxfp4 import decode_mxfp4
from plugins.formats.nvfp4 import dequantize_nvfp4, quantize_nvfp4


class ExpertProjection(Protocol):
    @property
    def num_experts(self) -> int: ...

    def expert(self, e: int, dtype: torch.dtype) -> torch.Tensor: ...

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor: ...


def fake_quant_nvfp4(x: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """x [..., K] rounded through NVFP4: fixed global scale, dynamic per-16 E4M3 block scales."""
    packed, block_scale, gs = quantize_nvfp4(x, global_scale=global_scale)
    return dequantize_nvfp4(packed, block_scale, gs, x.dtype)


@dataclass(frozen=True)
class Bf16Experts:
    """transformers' unquantized layout."""

    weight: torch.Tensor  # [E, in, out]

    @property
    def num_experts(self) -> int:
        return self.weight.shape[0]

    def expert(self, e: int, dtype: torch.dtype) -> torch.Tensor:
        return self.weight[e].to(dtype).contiguous()                        # [in, out]

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class Mxfp4Experts:
    """The gpt-oss release layout: blocks of 32 along the input axis, E8M0 scales."""

    blocks: torch.Tensor  # [E, out, in/32, 16] u8
    scales: torch.Tensor  # [E, out, in/32] u8

    @property
    def num_experts(self) -> int:
        return self.blocks.shape[0]

    def expert(self, e: int, dtype: torch.dtype) -> torch.Tensor:
        w = decode_mxfp4(self.blocks[e], self.scales[e], dtype)             # [out, in]
        return w.t().contiguous()                                          # [in, out]

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class Nvfp4Experts:
    """Model Optimizer's unified layout (input-major). `act_scale`, when set, is the activation
    global scale (the checkpoint's `_input_scale`) and turns on W4A4 emulation."""

    packed: torch.Tensor        # [E, in/2, out] u8
    block_scale: torch.Tensor   # [E, in/16, out] e4m3
    global_scale: torch.Tensor  # [] f32, shared by all experts
    act_scale: torch.Tensor | None = None  # [] f32

    @property
    def num_experts(self) -> int:
        return self.packed.shape[0]

    def expert(self, e: int, dtype: torch.dtype) -> torch.Tensor:
        packed = self.packed[e].t().contiguous()                            # [out, in/2]
        scale = self.block_scale[e].t().contiguous()                        # [out, in/16]
        w = dequantize_nvfp4(packed, scale, self.global_scale, dtype)       # [out, in]
        return w.t().contiguous()                                          # [in, out]

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act_scale is None else fake_quant_nvfp4(x, self.act_scale)


@dataclass(frozen=True)
class ExpertWeights:
    """The two projections of all experts of one layer, plus their biases (BF16 on disk)."""

    gate_up: ExpertProjection   # H -> 2I, output interleaved: gate = even, up = odd
    gate_up_bias: torch.Tensor  # [E, 2I]
    down: ExpertProjection      # I -> H
    down_bias: torch.Tensor     # [E, H]

    def __post_init__(self) -> None:
        e = self.gate_up.num_experts
        counts = (self.down.num_experts, self.gate_up_bias.shape[0], self.down_bias.shape[0])
        if any(n != e for n in counts):
            raise ValueError(f"ExpertWeights: expert counts disagree: gate_up {e}, down/biases {counts}")


@dataclass(frozen=True)
class Router:
    weight: torch.Tensor  # [E, H]
    bias: torch.Tensor    # [E]
