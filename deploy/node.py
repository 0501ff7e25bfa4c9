"""What a GPU node has: read once, from NVML or from an inventory YAML (dry runs and tests).

The launcher never guesses: GPU model, count, memory, compute capability, MIG mode, NVLink links,
driver and CUDA versions, and the multi-node environment (IMEX channels, /dev/shm, GDRCopy).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.errors import TrtkitError

# GPU product names -> catalog keys, most specific first ("GB200" contains "B200").
GPU_KEYS = (("GB200", "gb200"), ("B200", "b200"), ("H200", "h200"), ("H100", "h100"))
ARCH_OF_MAJOR = {9: "hopper", 10: "blackwell", 12: "blackwell"}
IMEX_CHANNELS = Path("/dev/nvidia-caps-imex-channels")
GDRCOPY_DEVICE = Path("/dev/gdrdrv")
SHM = Path("/dev/shm")


class NodeError(TrtkitError):
    """The node cannot be read (no NVML and no inventory, or a malformed inventory)."""

    exit_code = 2


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float
    compute_capability: str
    mig: bool = False
    nvlink_links: int = 0

    @property
    def key(self) -> str | None:
        """Catalog key (h100/h200/b200/gb200) or None for a GPU trtkit has no recipes for."""
        upper = self.name.upper()
        return next((k for needle, k in GPU_KEYS if needle in upper), None)

    @property
    def arch(self) -> str:
        major = int(self.compute_capability.split(".")[0])
        return ARCH_OF_MAJOR.get(major, f"sm{self.compute_capability.replace('.', '')}")


@dataclass(frozen=True)
class NodeEnv:
    imex_channels: int = 0
    shm_gb: float = 0.0
    gdrcopy: bool = False


@dataclass(frozen=True)
class Node:
    hostname: str
    gpus: tuple[Gpu, ...]
    driver_version: str
    cuda_version: str
    env: NodeEnv = field(default_factory=NodeEnv)
    source: str = "nvml"

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def gpu(self) -> Gpu:
        return self.gpus[0]

    def describe(self) -> str:
        g = self.gpu
        mig = ", MIG on" if any(x.mig for x in self.gpus) else ""
        return (f"{self.hostname}: {self.count} x {g.name} ({g.memory_gb:.0f} GB, sm {g.compute_capability}, "
                f"{g.nvlink_links} NVLink links{mig}), driver {self.driver_version}, CUDA {self.cuda_version} "
                f"[{self.source}]")


def read_env() -> NodeEnv:
    channels = len(list(IMEX_CHANNELS.iterdir())) if IMEX_CHANNELS.is_dir() else 0
    shm = shutil.disk_usage(SHM).total / 1e9 if SHM.is_dir() else 0.0
    return NodeEnv(imex_channels=channels, shm_gb=round(shm, 2), gdrcopy=GDRCOPY_DEVICE.exists())


def from_nvml() -> Node:
    """Read the node through NVML (nvidia-ml-py); a clear NodeError when there is no NVIDIA driver."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NodeError(f"cannot read the GPUs through NVML ({exc}); on a machine without an NVIDIA "
                        "driver pass --inventory FILE (a YAML description of the node)") from exc
    try:
        gpus = tuple(_nvml_gpu(pynvml, pynvml.nvmlDeviceGetHandleByIndex(i))
                     for i in range(pynvml.nvmlDeviceGetCount()))
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
    finally:
        pynvml.nvmlShutdown()
    if not gpus:
        raise NodeError("NVML reports no GPUs on this node")
    return Node(os.uname().nodename, gpus, driver, f"{cuda // 1000}.{cuda % 1000 // 10}", read_env(), "nvml")


def _nvml_gpu(nv: Any, h: Any) -> Gpu:
    major, minor = nv.nvmlDeviceGetCudaComputeCapability(h)
    try:
        mig = nv.nvmlDeviceGetMigMode(h)[0] == nv.NVML_DEVICE_MIG_ENABLE
    except nv.NVMLError:  # GPUs without MIG support
        mig = False
    links = 0
    for link in range(nv.NVML_NVLINK_MAX_LINKS):
        try:
            links += nv.nvmlDeviceGetNvLinkState(h, link) == nv.NVML_FEATURE_ENABLED
        except nv.NVMLError:
            break
    return Gpu(_text(nv.nvmlDeviceGetName(h)), nv.nvmlDeviceGetMemoryInfo(h).total / 1e9,
               f"{major}.{minor}", mig, links)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def from_inventory(path: Path) -> Node:
    """A node from YAML: `gpus: [..]` or `gpu: {..}` + `count: N`, versions, optional `env`."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise NodeError(f"{path}: cannot read the inventory ({exc})") from exc
    if not isinstance(data, dict):
        raise NodeError(f"{path}: an inventory is a YAML mapping (hostname, gpus or gpu + count, "
                        "driver_version, cuda_version, env)")
    try:
        if "gpus" in data:
            gpus = tuple(Gpu(**g) for g in data["gpus"])
        else:
            gpus = (Gpu(**data["gpu"]),) * int(data["count"])
        env = NodeEnv(**(data.get("env") or {}))
        node = Node(str(data.get("hostname", "inventory")), gpus, str(data["driver_version"]),
                    str(data["cuda_version"]), env, f"inventory {path}")
    except (KeyError, TypeError, ValueError) as exc:
        raise NodeError(f"{path}: malformed inventory ({exc!r}); see deploy/node.py for the fields") from exc
    if not gpus:
        raise NodeError(f"{path}: the inventory lists no GPUs")
    return node


def read_node(inventory: Path | None) -> Node:
    return from_inventory(inventory) if inventory is not None else from_nvml()
