"""Calibration hooks for the runtime: collect amax of the activations entering each expert projection."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from builder.layout import experts_prefix
from plugins.formats.nvfp4 import scale_from_amax


@dataclass
class AmaxCollector:
    """An `on_expert_input` callback: max |x| per (layer, projection), over all experts and calls."""

    amax: dict[tuple[int, str], float] = field(default_factory=dict)

    def __call__(self, layer: int, proj: str, expert: int, x: torch.Tensor) -> None:
        if x.numel():
            key = (layer, proj)
            self.amax[key] = max(self.amax.get(key, 0.0), float(x.detach().abs().max()))

    def by_projection(self) -> dict[str, float]:
        """{`model.layers.N.mlp.experts.<proj>`: amax}."""
        return {f"{experts_prefix(layer)}.{proj}": a for (layer, proj), a in sorted(self.amax.items())}

    def input_scales(self) -> dict[str, float]:
        return input_scales(self.by_projection())


def input_scales(amax: dict[str, float]) -> dict[str, float]:
    """{`<proj>_input_scale`: float32(amax) / (6 * 448)}, as `convert` takes them (float32-exact)."""
    return {f"{base}_input_scale": float(scale_from_amax(a)) for base, a in amax.items()}
