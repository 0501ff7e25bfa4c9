"""deploy.node.from_nvml on a stand-in pynvml: the node a launch reads on a real GPU machine, field by field,
from the values NVML documents (CUDA driver version 1000 * major + 10 * minor, memory in bytes, MIG as a
(current, pending) pair)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from deploy import node as node_module
from deploy.node import NodeEnv, NodeError, from_nvml


class NVMLError(Exception):
    pass


@dataclass
class Memory:
    total: int
    used: int
    free: int = 0


def fake_pynvml(gpus: list[dict], cuda: int = 12080) -> types.ModuleType:
    """gpus: name, cc (major, minor), total/used bytes, mig (None: no MIG support), links (enabled NVLinks)."""
    nv = types.ModuleType("pynvml")

    def mig_mode(h):
        if gpus[h]["mig"] is None:
            raise NVMLError("Not Supported")
        return (int(gpus[h]["mig"]), 0)

    def link_state(h, link):
        if link >= 18:
            raise NVMLError("Invalid Argument")
        return int(link < gpus[h]["links"])

    nv.__dict__.update(
        NVMLError=NVMLError, NVML_DEVICE_MIG_ENABLE=1, NVML_FEATURE_ENABLED=1, NVML_NVLINK_MAX_LINKS=18,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlSystemGetDriverVersion=lambda: b"570.124.06",
        nvmlSystemGetCudaDriverVersion_v2=lambda: cuda, nvmlDeviceGetName=lambda h: gpus[h]["name"],
        nvmlDeviceGetCudaComputeCapability=lambda h: gpus[h]["cc"], nvmlDeviceGetMigMode=mig_mode,
        nvmlDeviceGetNvLinkState=link_state,
        nvmlDeviceGetMemoryInfo=lambda h: Memory(gpus[h]["total"], gpus[h]["used"]))
    return nv


H100 = {"name": "NVIDIA H100 80GB HBM3", "cc": (9, 0), "total": 85_520_000_000, "used": 500_000_000, "mig": False,
        "links": 18}


@pytest.fixture(autouse=True)
def no_devices(monkeypatch):
    monkeypatch.setattr(node_module, "read_env", lambda: NodeEnv())


def test_a_node_read_through_nvml(monkeypatch):
    gpus = [H100, {**H100, "mig": True, "used": 41_300_000_000},
            {**H100, "name": "NVIDIA GB200", "cc": (10, 0), "mig": None, "links": 4}]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus, cuda=12080))
    n = from_nvml()
    assert (n.driver_version, n.cuda_version, n.count, n.source) == ("570.124.06", "12.8", 3, "nvml")
    assert [g.mig for g in n.gpus] == [False, True, False]  # no MIG support reads as off
    assert [g.nvlink_links for g in n.gpus] == [18, 18, 4]
    assert [g.memory_gb for g in n.gpus] == [85.52] * 3
    assert [g.memory_used_gb for g in n.gpus] == [0.5, 41.3, 0.5]
    assert [(g.compute_capability, g.arch, g.key) for g in n.gpus] == [
        ("9.0", "hopper", "h100"), ("9.0", "hopper", "h100"), ("10.0", "blackwell", "gb200")]


@pytest.mark.parametrize("cuda, text", [(12080, "12.8"), (13000, "13.0"), (12090, "12.9"), (11040, "11.4")])
def test_cuda_driver_version(monkeypatch, cuda, text):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([H100], cuda=cuda))
    assert from_nvml().cuda_version == text


def test_no_gpus_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([]))
    with pytest.raises(NodeError, match="NVML reports no GPUs"):
        from_nvml()
