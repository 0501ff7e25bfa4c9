"""`trtkit launch` at the GPU-count boundary, on a checked-in catalog recipe (8 GPUs per node): a node
one GPU short is refused with the count named, a node with exactly enough is accepted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.layout import ExpertFormat
from builder.synth import SHAPES, synth_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "catalog" / "gpt-oss-120b" / "b200" / "1k1k_balanced"
INVENTORY = Path(__file__).parent / "data" / "inventories" / "b200x8.yaml"


@pytest.mark.parametrize("count, fits", [(7, False), (8, True)])
def test_gpu_count_boundary(tmp_path, count, fits):
    inv = tmp_path / "node.yaml"
    inv.write_text(INVENTORY.read_text().replace("count: 8", f"count: {count}"))
    model = tmp_path / "model"
    model.mkdir()
    # the release config.json of the model the recipe was planned for (launch checks it against the recipe)
    cfg = synth_config(SHAPES["gpt-oss-120b"].spec(), ExpertFormat.NVFP4)
    cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "NVFP4"}  # as trtkit convert writes
    (model / "config.json").write_text(json.dumps(cfg))
    r = subprocess.run([sys.executable, "-m", "trtkit.cli", "launch", str(RECIPE), "--dry-run", "--inventory",
                        str(inv), "--model-dir", str(model)], capture_output=True, text=True, timeout=120)
    assert (r.returncode == 0) is fits, r.stderr
    if not fits:
        assert r.returncode == 2
        assert "too few GPUs: the recipe needs 8 per node, this node has 7" in r.stderr
    else:
        assert "chosen: b200/balanced" in r.stdout
