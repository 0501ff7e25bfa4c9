"""The GPU catalog: `data/gpus.yaml` loaded into frozen dataclasses (the single truth for hardware)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from pathlib import Path

import yaml

from recipes.errors import PlanError

GPUS_FILE = Path(__file__).resolve().parent / "data" / "gpus.yaml"
GB = 1e9


class Arch(str, Enum):
    """GPU architecture family; precision and MoE-backend choices hang off it (see `precision.py`)."""

    HOPPER = "hopper"       # sm90
    BLACKWELL = "blackwell"  # sm100


class Compute(str, Enum):
    """Tensor-core input precision of a GEMM."""

    BF16 = "bf16"
    FP8 = "fp8"
    FP4 = "fp4"


@dataclass(frozen=True)
class GpuSpec:
    """Per-GPU facts. Bandwidths in bytes/s, throughput in FLOP/s, memory in bytes."""

    key: str
    name: str
    arch: Arch
    compute_capability: str
    memory_bytes: float
    hbm_bytes_s: float
    flops: dict[Compute, float] = field(hash=False)  # peak dense tensor FLOP/s per input precision (absent: unsupported)
    nvlink_bytes_s: float        # per GPU, each direction
    nvlink_domain: int           # GPUs on one NVLink fabric: the largest single instance
    gpus_per_host: int           # GPUs per node (Slurm node, Kubernetes node, GB200 tray)
    scaleout_bytes_s: float
    board_w: float
    k8s_product: str

    def __post_init__(self) -> None:
        if self.nvlink_domain % self.gpus_per_host and self.gpus_per_host % self.nvlink_domain:
            raise PlanError(f"{GPUS_FILE}: {self.key}: nvlink_domain {self.nvlink_domain} and "
                            f"gpus_per_host {self.gpus_per_host} must divide one another")

    @property
    def has_fp4(self) -> bool:
        return Compute.FP4 in self.flops

    def peak(self, compute: Compute) -> float:
        if compute not in self.flops:
            raise PlanError(f"{self.name} has no {compute.value} tensor cores "
                            f"(it has {', '.join(c.value for c in self.flops)})")
        return self.flops[compute]

    def hosts(self, gpus: int) -> int:
        """Nodes an instance of `gpus` GPUs occupies: ceil(gpus / gpus_per_host)."""
        return -(-gpus // self.gpus_per_host)


def _gpu(key: str, row: dict) -> GpuSpec:
    flops = {Compute(k): float(v) * 1e12 for k, v in row["tflops"].items() if v is not None}
    return GpuSpec(key=key, name=row["name"], arch=Arch(row["arch"]),
                   compute_capability=str(row["compute_capability"]), memory_bytes=row["memory_gb"] * GB,
                   hbm_bytes_s=row["hbm_gb_s"] * GB, flops=flops, nvlink_bytes_s=row["nvlink_gb_s"] * GB,
                   nvlink_domain=int(row["nvlink_domain"]), gpus_per_host=int(row["gpus_per_host"]),
                   scaleout_bytes_s=row["scaleout_gb_s"] * GB, board_w=float(row["board_w"]),
                   k8s_product=row["k8s_product"])


@cache
def gpus() -> dict[str, GpuSpec]:
    rows = yaml.safe_load(GPUS_FILE.read_text())
    return {key: _gpu(key, row) for key, row in rows.items()}


def gpu(key: str) -> GpuSpec:
    table = gpus()
    if key.lower() not in table:
        raise PlanError(f"unknown GPU {key!r}; the catalog ({GPUS_FILE.name}) has: {', '.join(table)}")
    return table[key.lower()]
