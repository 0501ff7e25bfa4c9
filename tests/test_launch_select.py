"""deploy.select on checked-in catalog recipes and hand-made nodes: each refusal names the GPU or fact
that fails it, the ranking puts TensorRT-LLM's own MoE before the trtkit::moe plugin whatever the order
the recipes were found in, and the warnings an operator needs are given (and only then)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from deploy.node import Gpu, Node, NodeEnv
from deploy.select import RecipeRef, choose, reasons, warnings

CATALOG = Path(__file__).resolve().parents[1] / "recipes" / "catalog" / "gpt-oss-120b"
H100 = Gpu("NVIDIA H100 80GB HBM3", 79.6, "9.0", nvlink_links=18)  # the catalog plans H100 for 80 GB
H200 = Gpu("NVIDIA H200", 143.8, "9.0", nvlink_links=18)


@pytest.fixture(scope="module")
def h100_balanced() -> RecipeRef:
    r = RecipeRef.load(CATALOG / "h100" / "1k1k_balanced")
    assert r.gpu["gpus_per_node"] == 8 and r.gpu["nodes_per_instance"] == 1 and not r.uses_plugin
    return r


def node(*gpus: Gpu, shm_gb: float = 64.0, gdrcopy: bool = False) -> Node:
    return Node("n1", gpus, "570.124.06", "12.8", NodeEnv(shm_gb=shm_gb, gdrcopy=gdrcopy), "test")


def test_mig_on_any_gpu_refuses(h100_balanced):
    """MIG on the fourth GPU only: the node still cannot give TensorRT-LLM eight whole GPUs."""
    gpus = [H100] * 8
    gpus[3] = dataclasses.replace(H100, mig=True)
    why = reasons(h100_balanced, node(*gpus))
    assert len(why) == 1 and why[0].startswith("MIG enabled on GPU(s) [3]:"), why


def test_the_smallest_gpu_decides_memory(h100_balanced):
    """Seven 80 GB GPUs and one of 40 GB: one of the eight ranks lands on the 40 GB GPU."""
    why = reasons(h100_balanced, node(*[H100] * 7, dataclasses.replace(H100, memory_gb=40.0)))
    assert len(why) == 1 and why[0].startswith("too little memory: 40 GB per GPU, the recipe was planned for 80 GB"), why


@pytest.mark.parametrize("memory_gb, fits", [(78.0, True), (77.0, False), (72.0, False)])
def test_memory_slack_is_three_percent(h100_balanced, memory_gb, fits):
    """A GPU may report up to 3 % less than the 80 GB the recipe was planned for (77.6 GB), no less."""
    why = reasons(h100_balanced, node(*[dataclasses.replace(H100, memory_gb=memory_gb)] * 8))
    assert (why == []) is fits, why


def test_load_balancer_needs_gdrcopy(h100_balanced):
    """Online expert load balancing (moe_config.load_balancer) moves weights through GDRCopy."""
    eplb = dataclasses.replace(h100_balanced, options={**h100_balanced.options,
                                                       "moe_config": {"load_balancer": {"num_slots": 144}}})
    assert eplb.uses_load_balancer
    why = reasons(eplb, node(*[H100] * 8))
    assert len(why) == 1 and "needs GDRCopy (/dev/gdrdrv)" in why[0], why
    assert reasons(eplb, node(*[H100] * 8, gdrcopy=True)) == []
    assert reasons(h100_balanced, node(*[H100] * 8)) == []  # no load balancer: GDRCopy not needed


@pytest.mark.parametrize("plugin_first", [True, False])
def test_plugin_recipe_ranks_last_in_any_order(h100_balanced, plugin_first):
    """Two recipes equal in everything but the MoE backend: TensorRT-LLM's own wins, whichever was found first."""
    plugin = dataclasses.replace(h100_balanced, doc={**h100_balanced.doc, "plugin": {"name": "trtkit::moe"}})
    found = [plugin, h100_balanced] if plugin_first else [h100_balanced, plugin]
    best, _ = choose(found, node(*[H100] * 8), profile=None)
    assert best is h100_balanced


def test_another_gpu_model_is_warned_about(h100_balanced):
    """An H100 recipe on an H200 node fits (same architecture, more memory) but was not planned for it."""
    said = warnings(h100_balanced, node(*[H200] * 8))
    assert [w for w in said if "planned for H100 SXM; this node has NVIDIA H200" in w], said
    assert warnings(h100_balanced, node(*[H100] * 8)) == []


@pytest.mark.parametrize("count, shm_gb, warned", [(8, 8.0, True), (8, 16.0, False), (1, 0.0, False)])
def test_small_dev_shm_is_warned_about_on_multi_gpu_nodes(h100_balanced, count, shm_gb, warned):
    """Multi-GPU TensorRT-LLM moves tensors through /dev/shm (docker's default is 64 MB); one GPU does not."""
    said = warnings(h100_balanced, node(*[H100] * count, shm_gb=shm_gb))
    assert any(w.startswith(f"/dev/shm is {shm_gb:.1f} GB;") for w in said) is warned, said
