"""Calibrated efficiency factors of the performance model, one set per GPU architecture family.

The numbers live in `data/calibration.yaml`, written by `recipes/calibrate_model.py` (a least-squares
fit of the published gpt-oss measurements in `data/published.yaml`; residuals in CALIBRATION.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path

import yaml

from recipes.errors import PlanError
from recipes.hardware import Arch

CALIBRATION_FILE = Path(__file__).resolve().parent / "data" / "calibration.yaml"


@dataclass(frozen=True)
class Efficiency:
    """What the hardware delivers of its datasheet peak, and the fixed costs no roofline shows."""

    # fitted per architecture family
    moe: float         # fraction of peak (at the expert GEMM precision) on large MoE grouped GEMMs
    seq_us: float      # per sequence per iteration (host bookkeeping, sampling, detokenize)
    # fitted, global (software, the same on every GPU)
    layer_us: float    # fixed cost per decoder layer per iteration (kernel tails, launches in graphs)
    expert_us: float   # minimum time of one touched expert's GEMMs per layer (pipeline fill, tail)
    link: float        # fraction of NVLink bandwidth achieved by collectives at MoE-layer granularity
    # priors, not fitted (shared/reference/hardware.md "practical de-rates"; step_ms and collective_us
    # cannot be told apart from layer_us by the published points)
    mem: float = 0.8            # fraction of HBM bandwidth achieved by weight, KV and activation streams
    gemm: float = 0.7           # fraction of peak BF16 tensor throughput on dense GEMMs and attention
    step_ms: float = 0.1        # fixed cost per iteration (scheduler, sampler launch, host sync)
    collective_us: float = 8.0  # fixed latency of one all-reduce / all-to-all

    PER_ARCH = ("moe", "seq_us")
    GLOBAL = ("layer_us", "expert_us", "link")
    PRIORS = ("mem", "gemm", "step_ms", "collective_us")
    FITTED = PER_ARCH + GLOBAL

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@cache
def calibration() -> dict[Arch, Efficiency]:
    if not CALIBRATION_FILE.is_file():
        raise PlanError(f"{CALIBRATION_FILE}: missing; run `python recipes/calibrate_model.py` to fit it")
    data = yaml.safe_load(CALIBRATION_FILE.read_text())
    names = {f.name for f in fields(Efficiency)}
    out = {}
    for arch in Arch:
        row = {**data["global"], **(data["per_arch"].get(arch.value) or {})}
        if set(row) - names or set(Efficiency.FITTED) - set(row):
            raise PlanError(f"{CALIBRATION_FILE}: {arch.value}: unknown keys {sorted(set(row) - names)} or "
                            f"missing {sorted(set(Efficiency.FITTED) - set(row))}; refit with "
                            f"recipes/calibrate_model.py")
        out[arch] = Efficiency(**row)
    return out


def efficiency(arch: Arch) -> Efficiency:
    return calibration()[arch]
