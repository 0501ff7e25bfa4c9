"""`trtkit plugins list` and plugins.registry: every plugin with its three registrations, availability
derived from what is installed here (CI: torch only), and nothing registered by listing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from plugins import registry
from trtkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_every_plugin_has_torch_tensorrt_llm_and_tensorrt_registrations():
    found = {p.name: p for p in registry.list_plugins()}
    assert sorted(found) == ["trtkit::attention", "trtkit::moe"]
    for p in found.values():
        targets = [r.target for r in p.registrations]
        assert targets == ["torch", "tensorrt_llm", "tensorrt"]
        torch_reg = p.registrations[0]
        assert torch_reg.available and torch_reg.module == "plugins.ops"
    assert found["trtkit::moe"].registrations[1].module == "plugins.trtllm.trtllm_gptoss"
    assert found["trtkit::attention"].registrations[2].module == "plugins.tensorrt_qdp"


def test_missing_packages_are_named(monkeypatch):
    monkeypatch.setattr(registry, "_version", lambda dist: None)
    monkeypatch.setattr(registry, "_installed", lambda module: False)
    moe = registry.list_plugins()[0]
    by_target = {r.target: r for r in moe.registrations}
    assert not by_target["tensorrt_llm"].available
    assert by_target["tensorrt_llm"].detail == "tensorrt_llm not installed"
    assert by_target["tensorrt"].detail == "tensorrt not installed"
    assert "triton not installed" in by_target["torch"].detail


def test_tensorrt_older_than_aot_impl_is_refused(monkeypatch):
    """tensorrt.plugin gained aot_impl / KernelLaunchParams in 10.9: older releases cannot import the module."""
    for version, available in (("10.8.0.43", False), ("10.9.0.34", True), ("11.1.0", True), ("10.13.3.9.post1", True)):
        monkeypatch.setattr(registry, "_version", lambda dist, v=version: v if dist == "tensorrt" else "3.5.0")
        monkeypatch.setattr(registry, "_installed", lambda module: True)
        trt_reg = registry.list_plugins()[1].registrations[2]
        assert trt_reg.available is available, (version, trt_reg.detail)
        assert (trt_reg.detail == f"tensorrt {version} is too old: the plugins need tensorrt.plugin with aot_impl "
                "(TensorRT >= 10.9)") is not available
    assert registry._release("10.9") == (10, 9) and registry._release("dev") == ()


def test_tensorrt_with_broken_plugins_is_refused(monkeypatch):
    """10.14.* breaks Quickly Deployable Plugins (Torch-TensorRT's feature table turns them off there)."""
    for version, available in (("10.14.1.48", False), ("10.15.1.29", True), ("10.13.3.9", True)):
        monkeypatch.setattr(registry, "_version", lambda dist, v=version: v if dist == "tensorrt" else "3.5.0")
        monkeypatch.setattr(registry, "_installed", lambda module: True)
        trt_reg = registry.list_plugins()[0].registrations[2]
        assert trt_reg.available is available, (version, trt_reg.detail)
        assert ("known bug" in trt_reg.detail and ">= 10.15" in trt_reg.detail) is not available


def test_cli_table_and_json():
    result = CliRunner().invoke(main, ["plugins", "list"])
    assert result.exit_code == 0, result.output
    assert "trtkit::moe" in result.output and "trtkit::attention" in result.output
    assert "plugins.ops" in result.output
    result = CliRunner().invoke(main, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [p["name"] for p in doc] == ["trtkit::moe", "trtkit::attention"]
    assert set(doc[0]["registrations"][0]) == {"target", "module", "available", "detail"}


def test_listing_registers_nothing():
    code = ("import torch\nfrom plugins.registry import list_plugins\nlist_plugins()\n"
            "assert not hasattr(torch.ops.trtkit, 'moe')\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_trtllm_module_dir_exposes_only_the_model_package():
    """--custom_module_dirs puts the package's parent first on sys.path: that folder must hold nothing
    that could shadow another top-level module."""
    from plugins import trtllm

    module_dir = ROOT / trtllm.MODULE_DIR
    assert (module_dir / "__init__.py").is_file() and module_dir.name == trtllm.PACKAGE
    beside = sorted(p.name for p in module_dir.parent.iterdir() if p.name != "__pycache__")
    assert beside == ["__init__.py", trtllm.PACKAGE]
    assert all((ROOT / entry).is_dir() for entry in trtllm.PYTHONPATH)
    assert (ROOT / trtllm.PYTHONPATH[0] / "plugins" / "moe_layer.py").is_file()
