"""Every bad input the converter must refuse: one line naming the file/tensor and the fix, non-zero
exit, and no OUT left behind. Driven through the real CLI (subprocess) where the exit code matters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from builder.convert import convert
from builder.errors import CheckpointError, OutputError, UnsupportedArchitecture

TRTKIT = [sys.executable, "-m", "trtkit.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TRTKIT, *args], capture_output=True, text=True, timeout=300)


def shard_of(folder: Path) -> Path:
    return next(folder.glob("model-*.safetensors"))


def edit_tensors(folder: Path, fn) -> None:
    shard = shard_of(folder)
    data = load_file(shard)
    fn(data)
    save_file(data, shard, metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    idx = json.loads(index.read_text())
    idx["weight_map"] = {n: shard.name for n in data}
    index.write_text(json.dumps(idx))


@pytest.fixture
def src(tiny_mxfp4, tmp_path) -> Path:
    out = tmp_path / "src"
    shutil.copytree(tiny_mxfp4, out)
    return out


def expect_error(src: Path, tmp_path: Path, exc_type, *fragments: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(exc_type) as info:
        convert(src, out)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


def test_missing_and_unexpected_tensors_are_all_listed(src, tmp_path):
    def fn(d):
        del d["model.layers.0.self_attn.sinks"]
        del d["model.layers.1.mlp.experts.down_proj_scales"]
        d["model.layers.0.extra.weight"] = torch.zeros(2, dtype=torch.bfloat16)
    edit_tensors(src, fn)
    expect_error(src, tmp_path, CheckpointError, "missing 2 tensor(s): model.layers.0.self_attn.sinks, "
                 "model.layers.1.mlp.experts.down_proj_scales", "unexpected 1 tensor(s): model.layers.0.extra.weight")


def test_wrong_shape_and_dtype(src, tmp_path):
    def fn(d):
        d["model.layers.0.mlp.router.weight"] = torch.zeros(8, 64, dtype=torch.bfloat16)
        d["model.norm.weight"] = d["model.norm.weight"].float()
    edit_tensors(src, fn)
    expect_error(src, tmp_path, CheckpointError, "model.layers.0.mlp.router.weight is bfloat16[8, 64]",
                 "expected bfloat16[8, 128]", "model.norm.weight is float32[128]")


def test_nan_and_inf_name_tensor_and_index(src, tmp_path):
    def fn(d):
        d["model.layers.1.self_attn.o_proj.weight"][5, 7] = float("nan")
    edit_tensors(src, fn)
    expect_error(src, tmp_path, CheckpointError, "tensor model.layers.1.self_attn.o_proj.weight",
                 "non-finite value nan at index [5, 7]")


def test_inf_in_expert_bias(src, tmp_path):
    def fn(d):
        d["model.layers.0.mlp.experts.gate_up_proj_bias"][3, 11] = float("inf")
    edit_tensors(src, fn)
    expect_error(src, tmp_path, CheckpointError, "model.layers.0.mlp.experts.gate_up_proj_bias",
                 "index [3, 11]")


def test_e8m0_nan_scale(src, tmp_path):
    def fn(d):
        d["model.layers.0.mlp.experts.gate_up_proj_scales"][2, 9, 1] = 255
    edit_tensors(src, fn)
    expect_error(src, tmp_path, CheckpointError, "gate_up_proj_scales", "255 (NaN) at index [2, 9, 1]")


def test_truncated_shard(src, tmp_path):
    shard = shard_of(src)
    shard.write_bytes(shard.read_bytes()[:-1000])
    expect_error(src, tmp_path, CheckpointError, shard.name, "truncated")


def test_corrupt_header(src, tmp_path):
    shard = shard_of(src)
    raw = bytearray(shard.read_bytes())
    raw[8:12] = b"\xff\xfe{["
    shard.write_bytes(bytes(raw))
    expect_error(src, tmp_path, CheckpointError, shard.name, "corrupt safetensors header")


def test_index_names_missing_shard(src, tmp_path):
    index = src / "model.safetensors.index.json"
    idx = json.loads(index.read_text())
    idx["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps(idx))
    expect_error(src, tmp_path, CheckpointError, "model.norm.weight", "model-00002-of-00002.safetensors",
                 "does not exist")


@pytest.mark.parametrize("path", ["../outside.safetensors", "/etc/passwd", "sub/dir.safetensors"])
def test_index_path_outside_folder(src, tmp_path, path):
    index = src / "model.safetensors.index.json"
    idx = json.loads(index.read_text())
    idx["weight_map"]["model.norm.weight"] = path
    index.write_text(json.dumps(idx))
    expect_error(src, tmp_path, CheckpointError, "points outside the checkpoint folder", repr(path))


def test_non_gptoss_config(src, tmp_path):
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["MixtralForCausalLM"], "mixtral"
    (src / "config.json").write_text(json.dumps(cfg))
    expect_error(src, tmp_path, UnsupportedArchitecture, "unsupported architecture MixtralForCausalLM",
                 "supported: GptOssForCausalLM")


def test_unknown_quant_method(src, tmp_path):
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq"}
    (src / "config.json").write_text(json.dumps(cfg))
    expect_error(src, tmp_path, CheckpointError, "quant_method='gptq' is not supported")


def test_out_of_disk_space(tiny_mxfp4, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with pytest.raises(OutputError, match="out of disk space: the output needs"):
            convert(tiny_mxfp4, mnt / "out")
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_while_writing_is_explained(tmp_path):
    """A real ENOSPC (/dev/full) in the middle of a write becomes a one-line OutputError."""
    from builder.layout import TensorSpec
    from builder.safetensors_io import write_stream
    from builder.writer import guard_disk

    plan = [TensorSpec("x", torch.uint8, (1 << 20,))]
    with pytest.raises(OutputError, match="out of disk space while writing"):
        guard_disk(lambda: write_stream(Path("/dev/full"), plan,
                                        lambda s: iter([torch.zeros(1 << 20, dtype=torch.uint8)])), tmp_path)


def test_cli_refuses_non_empty_out_without_force(tiny_mxfp4, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    r = run_cli("convert", "--quiet", str(tiny_mxfp4), str(out))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"trtkit: error: {out}: exists and is not empty; "
                                             "pass --force to replace it"]
    assert (out / "keep.txt").read_text() == "precious"
    r = run_cli("convert", "--quiet", "--force", str(tiny_mxfp4), str(out))
    assert r.returncode == 0, r.stderr
    assert not (out / "keep.txt").exists() and (out / "trtkit_manifest.json").is_file()


def test_cli_error_is_one_line(src, tmp_path):
    (src / "config.json").write_text("{not json")
    r = run_cli("convert", "--quiet", str(src), str(tmp_path / "out"))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trtkit: error: ") and "config.json" in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["convert", "build"])
def test_force_never_replaces_a_folder_that_holds_the_source(tiny_mxfp4, tmp_path, command):
    """OUT = SRC's parent with --force would rename SRC away with the old OUT: refused before any work."""
    parent = tmp_path / "parent"
    src = parent / "src"
    shutil.copytree(tiny_mxfp4, src)
    before = sorted(p.name for p in src.iterdir())
    r = run_cli(command, "--quiet", "--force", str(src), str(parent)) if command == "convert" else \
        run_cli(command, "--force", str(src), str(parent))
    assert r.returncode == 1, r.stdout
    assert r.stderr.strip().splitlines() == [f"trtkit: error: OUT {parent} contains SRC {src}: replacing OUT would "
                                             "delete the source; choose an output folder outside the source's parents"]
    assert sorted(p.name for p in src.iterdir()) == before
    assert not (tmp_path / ".parent.partial").exists()
    r = run_cli(command, "--force", str(src), str(src / "out")) if command == "build" else \
        run_cli(command, "--quiet", str(src), str(src / "out"))
    assert r.returncode == 1 and f"OUT {src / 'out'} is inside SRC {src}" in r.stderr
    assert sorted(p.name for p in src.iterdir()) == before


def test_zero_input_scale_from_calibration_is_refused(src, tmp_path):
    """An amax of 0 (no calibration activation reached a projection) would write an input_scale of 0,
    which no runtime can divide by: refused before anything is written."""
    names = [f"model.layers.{i}.mlp.experts.{p}_input_scale" for i in (0, 1) for p in ("gate_up_proj", "down_proj")]
    scales = dict.fromkeys(names, 0.01) | {names[3]: 0.0}
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=f"calibration gave input_scale {names[3]}=0; each must be finite"):
        convert(src, out, input_scales=scales)
    assert not out.exists() and not (tmp_path / ".out.partial").exists()
