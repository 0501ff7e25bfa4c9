"""What a GPU node has: read once, from NVML or from an inventory YAML (dry runs and tests).

The launcher never guesses: GPU model, count, memory, compute capability, MIG mode, NVLink links,
driver and CUDA versions, and the multi-node environment (IMEX channels, /dev/shm, GDRCopy).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import TrtkitError
from builder.numbers import finite
from recipes.validate import read_yaml

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
    memory_used_gb: float = 0.0  # in use when the node was read (other processes; the driver's own reserve)

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
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    return Gpu(_text(nv.nvmlDeviceGetName(h)), mem.total / 1e9, f"{major}.{minor}", mig, links, mem.used / 1e9)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# ---- inventory YAML: every field, its type and range, in one table --------------------------------------

Parse = Callable[[Any], Any]  # the field's value, or ValueError saying what is wrong and what to write


def _string(v: Any) -> str:
    if isinstance(v, str) and v.strip():
        return v
    raise ValueError(f"{v!r} must be non-empty text")


def _version(v: Any) -> str:
    """"570.124.06", or a number YAML read from an unquoted 12.8."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return _string(v)


def _capability(v: Any) -> str:
    """MAJOR.MINOR; an unquoted 9.0 (a YAML float) or 10 means "9.0" / "10.0"."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f'{v!r} must be MAJOR.MINOR, like "9.0"')
    text = f"{v}.0" if isinstance(v, int) else str(v)
    if not re.fullmatch(r"\d{1,2}\.\d", text):
        raise ValueError(f'{v!r} must be MAJOR.MINOR, like "9.0"')
    return text


def _number(v: Any, minimum: float, strict: bool, what: str) -> float:
    if not finite(v):
        raise ValueError(f"{v!r} must be a number of {what}")
    if v < minimum or (strict and v == minimum):
        raise ValueError(f"{v!r} must be {'>' if strict else '>='} {minimum:g} {what}")
    return float(v)


def _integer(v: Any, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{v!r} must be a whole number >= {minimum}")
    return v


def _flag(v: Any) -> bool:
    """YAML's own true/false (yes/no unquoted) only: the text "no" would otherwise read as true."""
    if not isinstance(v, bool):
        raise ValueError(f"{v!r} must be true or false (unquoted)")
    return v


GPU_FIELDS: dict[str, tuple[Parse, bool]] = {  # field: (parse, required)
    "name": (_string, True),
    "memory_gb": (lambda v: _number(v, 0, True, "GB"), True),
    "compute_capability": (_capability, True),
    "mig": (_flag, False),
    "nvlink_links": (lambda v: _integer(v, 0), False),
    "memory_used_gb": (lambda v: _number(v, 0, False, "GB"), False),
}
ENV_FIELDS: dict[str, tuple[Parse, bool]] = {
    "imex_channels": (lambda v: _integer(v, 0), False),
    "shm_gb": (lambda v: _number(v, 0, False, "GB"), False),
    "gdrcopy": (_flag, False),
}
NODE_FIELDS: dict[str, tuple[Parse, bool]] = {
    "hostname": (_string, False),
    "driver_version": (_version, True),
    "cuda_version": (_version, True),
    "gpus": (lambda v: v, False),   # a list of GPU_FIELDS mappings, or
    "gpu": (lambda v: v, False),    # one GPU_FIELDS mapping ...
    "count": (lambda v: _integer(v, 1), False),  # ... and how many
    "env": (lambda v: v, False),    # ENV_FIELDS
}


def _fields(path: Path, where: str, data: Any, table: dict[str, tuple[Parse, bool]]) -> dict[str, Any]:
    """`data` checked against `table`: a mapping with known keys, required ones present, each parsed."""
    if not isinstance(data, dict):
        raise NodeError(f"{path}: {where or 'the inventory'} must be a mapping of {', '.join(table)}")
    prefix = f"{where}." if where else ""
    unknown = [k for k in data if k not in table]
    if unknown:
        raise NodeError(f"{path}: {prefix}{unknown[0]}: unknown field; the fields are {', '.join(table)}")
    missing = [k for k, (_, required) in table.items() if required and k not in data]
    if missing:
        raise NodeError(f"{path}: {prefix}{missing[0]}: missing (see deploy/node.py for the fields)")
    out = {}
    for key, value in data.items():
        try:
            out[key] = table[key][0](value)
        except ValueError as exc:
            raise NodeError(f"{path}: {prefix}{key}: {exc}") from None
    return out


def _inventory_gpus(path: Path, data: dict) -> tuple[Gpu, ...]:
    if ("gpus" in data) == ("gpu" in data) or ("count" in data) != ("gpu" in data):
        raise NodeError(f"{path}: give either gpus: [{{name, memory_gb, compute_capability, ...}}, ...] or "
                        "gpu: {...} with count: N")
    if "gpu" in data:
        return (Gpu(**_fields(path, "gpu", data["gpu"], GPU_FIELDS)),) * data["count"]
    if not isinstance(data["gpus"], list) or not data["gpus"]:
        raise NodeError(f"{path}: gpus: must be a non-empty list of GPUs")
    return tuple(Gpu(**_fields(path, f"gpus[{i}]", g, GPU_FIELDS)) for i, g in enumerate(data["gpus"]))


def from_inventory(path: Path) -> Node:
    """A node from YAML: `gpus: [..]` or `gpu: {..}` + `count: N`, versions, optional `env`; every field
    checked against the tables above (NodeError naming the file and field)."""
    data = read_yaml(path, NodeError, "pass an existing inventory YAML file")
    top = _fields(path, "", data, NODE_FIELDS)
    gpus = _inventory_gpus(path, top)
    env = NodeEnv(**_fields(path, "env", top.get("env") or {}, ENV_FIELDS))
    return Node(str(top.get("hostname", "inventory")), gpus, top["driver_version"], top["cuda_version"], env,
                f"inventory {path}")


def read_node(inventory: Path | None) -> Node:
    return from_inventory(inventory) if inventory is not None else from_nvml()
