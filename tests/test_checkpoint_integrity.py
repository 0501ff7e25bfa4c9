"""A converted folder's own checks: `verify_manifest` finds a changed byte, a missing file and an unlisted
file; and a Model Optimizer export that states its format only in hf_quant_config.json (no inline
quantization_config) still reads as NVFP4 (nvfp4-gptoss-layout.md: "Ship hf_quant_config.json")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from builder.checkpoint import Checkpoint
from builder.errors import CheckpointError
from builder.layout import ExpertFormat
from builder.manifest import verify_manifest


@pytest.fixture
def nvfp4(tiny_nvfp4, tmp_path) -> Path:
    out = tmp_path / "nvfp4"
    shutil.copytree(tiny_nvfp4, out)
    return out


def test_manifest_reports_changed_missing_and_unlisted_files(nvfp4):
    assert verify_manifest(nvfp4) == []
    shard = sorted(nvfp4.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01                                     # one bit of the last tensor's payload
    shard.write_bytes(bytes(data))
    (nvfp4 / "generation_config.json").unlink()
    (nvfp4 / "extra.txt").write_text("left over")
    assert sorted(verify_manifest(nvfp4)) == sorted([f"{shard.name}: sha256 differs from the manifest",
                                                     "generation_config.json: missing",
                                                     "extra.txt: not listed in the manifest"])


def test_hf_quant_config_alone_names_the_format(nvfp4):
    config = json.loads((nvfp4 / "config.json").read_text())
    del config["quantization_config"]
    (nvfp4 / "config.json").write_text(json.dumps(config))
    assert (nvfp4 / "hf_quant_config.json").is_file()
    ckpt = Checkpoint.open(nvfp4)
    assert ckpt.expert_format is ExpertFormat.NVFP4
    ckpt.close()
    (nvfp4 / "hf_quant_config.json").unlink()
    with pytest.raises(CheckpointError):  # without either statement: read as BF16, its FP4 tensors refused
        Checkpoint.open(nvfp4).close()
