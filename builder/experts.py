"""Per-projection expert conversion to the NVFP4 layout, one expert at a time.

Source layouts (E experts, projection in -> out):
  MXFP4  `<p>_blocks` u8 [E, out, in/32, 16] + `<p>_scales` u8 [E, out, in/32]  (closed-form cast)
  BF16   `<p>` bf16 [E, in, out]                                                 (NVFP4 quantize)
Target (Model Optimizer unified layout, input-major):
  `<p>` u8 [E, in/2, out], `<p>_weight_scale` e4m3 [E, in/16, out], `<p>_weight_scale_2` f32 []
One `weight_scale_2` is shared by all experts of a projection (TensorRT-LLM fuses them): for MXFP4 it
comes from k_max over the whole tensor; for BF16 from amax over the whole tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from builder.checkpoint import Checkpoint
from builder.errors import CheckpointError
from builder.layout import ExpertFormat, Projection
from plugins.formats.cast import CastStats, cast_mxfp4_to_nvfp4, mxfp4_kmax
from plugins.formats.nvfp4 import quantize_nvfp4, scale_from_amax

E8M0_NAN = 255  # the E8M0 encoding of NaN


@dataclass
class ExpertCaster:
    """Converts one projection of one layer; `weight()` streams experts, `weight_scale()` reuses them."""

    ckpt: Checkpoint
    base: str  # e.g. "model.layers.3.mlp.experts.gate_up_proj"
    proj: Projection
    stats: CastStats | None = None
    _scales: list[torch.Tensor] = field(default_factory=list)
    _global: torch.Tensor | None = None
    _k_max: int | None = None

    @property
    def num_experts(self) -> int:
        return self.ckpt.spec.num_local_experts

    @property
    def is_mxfp4(self) -> bool:
        return self.ckpt.expert_format is ExpertFormat.MXFP4

    # ---- the shared global scale ----------------------------------------------------------
    def global_scale(self) -> torch.Tensor:
        if self._global is None:
            self._global = self._mx_global() if self.is_mxfp4 else self._bf16_global()
        return self._global

    def _mx_global(self) -> torch.Tensor:
        name = f"{self.base}_scales"
        scales = self.ckpt.load(name)  # [E, out, in/32] u8 (1/16 of the weight bytes)
        nan = scales == E8M0_NAN
        if nan.any():
            idx = [int(i) for i in nan.nonzero()[0]]
            raise CheckpointError(f"tensor {name}: E8M0 scale byte 255 (NaN) at index {idx}; "
                                  "the source weights are corrupt, fix or re-download them")
        self._k_max = mxfp4_kmax(scales)
        return torch.tensor(2.0 ** (self._k_max - 8), dtype=torch.float32)

    def _bf16_global(self) -> torch.Tensor:
        amax = None
        for e in range(self.num_experts):
            w = self.ckpt.load_rows(self.base, e, e + 1)  # [1, in, out] bf16, checked finite
            a = w.abs().amax()
            amax = a if amax is None else torch.maximum(amax, a)
        # Model Optimizer: amax in the weight dtype, then float32 / (6 * 448)
        return scale_from_amax(amax)

    # ---- per expert -----------------------------------------------------------------------
    def _convert(self, e: int) -> tuple[torch.Tensor, torch.Tensor, CastStats | None]:
        """Expert e -> (packed [in/2, out] u8, block scales [in/16, out] e4m3, stats)."""
        gs = self.global_scale()
        if self.is_mxfp4:
            blocks = self.ckpt.load_rows(f"{self.base}_blocks", e, e + 1)[0]   # [out, in/32, 16]
            scales = self.ckpt.load_rows(f"{self.base}_scales", e, e + 1)[0]   # [out, in/32]
            packed, bscale, _, stats = cast_mxfp4_to_nvfp4(blocks, scales, k_max=self._k_max)
        else:
            w = self.ckpt.load_rows(self.base, e, e + 1)[0]                    # [in, out] bf16
            packed, bscale, _ = quantize_nvfp4(w.t(), global_scale=gs)         # on [out, in]
            stats = None
        return packed.t().contiguous(), bscale.t().contiguous(), stats        # input-major

    def weight(self) -> Iterator[torch.Tensor]:
        """Yield `<p>` as [1, in/2, out] chunks; keep the block scales (1/8 of the bytes) for later."""
        self._scales = []
        total = CastStats(0, 0, 0, self._k_max or 0, 0) if self.is_mxfp4 else None
        for e in range(self.num_experts):
            packed, bscale, stats = self._convert(e)
            self._scales.append(bscale)
            if total is not None:
                total = total + stats
            yield packed.unsqueeze(0)
        self.stats = total

    def weight_scale(self) -> Iterator[torch.Tensor]:
        if len(self._scales) != self.num_experts:  # another rank wrote the weight: recompute
            self._scales = [self._convert(e)[1] for e in range(self.num_experts)]
        for s in self._scales:
            yield s.unsqueeze(0)
        self._scales = []

    def weight_scale_2(self) -> Iterator[torch.Tensor]:
        yield self.global_scale().reshape(())
