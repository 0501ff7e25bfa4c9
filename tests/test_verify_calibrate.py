"""`trtkit verify` and `trtkit convert --calibrate` through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from builder.checkpoint import Checkpoint
from builder.synth import synth


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trtkit.cli", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def calibrated(tiny_mxfp4, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cal") / "nv"
    r = cli("convert", "--quiet", "--calibrate", str(tiny_mxfp4), str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_verify_exact_conversion(tiny_mxfp4, tiny_nvfp4):
    r = cli("verify", "--json", "--num-tokens", "64", str(tiny_mxfp4), str(tiny_nvfp4))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert set(report) >= {"kl_mean", "kl_max", "top1_agreement", "max_abs_logit_diff", "exact_tensors",
                           "inexact_tensors", "passed"}
    assert report["top1_agreement"] == 1.0 and report["kl_max"] == 0.0 and report["max_abs_logit_diff"] == 0.0
    assert len(report["exact_tensors"]) == 4 and report["inexact_tensors"] == [] and report["passed"]


def test_verify_w4a4_is_reported_honestly(tiny_mxfp4, calibrated):
    r = cli("verify", "--json", "--emulate-w4a4", "--num-tokens", "64", str(tiny_mxfp4), str(calibrated))
    report = json.loads(r.stdout)
    assert report["kl_mean"] > 0 and report["max_abs_logit_diff"] > 0  # activations really are rounded
    assert len(report["exact_tensors"]) == 4                            # weights are still exact
    assert r.returncode == (0 if report["passed"] else 1)
    loose = cli("verify", "--json", "--emulate-w4a4", "--num-tokens", "64", "--max-kl", "10",
                "--min-top1", "0", str(tiny_mxfp4), str(calibrated))
    assert loose.returncode == 0 and json.loads(loose.stdout)["passed"]
    strict = cli("verify", "--emulate-w4a4", "--num-tokens", "64", "--max-kl", "0", str(tiny_mxfp4),
                 str(calibrated))
    assert strict.returncode == 1 and "verification FAILED" in strict.stdout


def test_verify_lossy_bf16_conversion_lists_inexact_tensors(tiny_bf16, tmp_path):
    from builder.convert import convert

    out = convert(tiny_bf16, tmp_path / "nv").out
    r = cli("verify", "--json", "--num-tokens", "32", "--max-kl", "10", "--min-top1", "0", str(tiny_bf16), str(out))
    report = json.loads(r.stdout)
    assert len(report["inexact_tensors"]) == 4 and report["exact_tensors"] == []


def test_verify_mismatched_architectures(tiny_mxfp4, tmp_path):
    other = tmp_path / "three"
    synth(other, "tiny", layers=3)
    r = cli("verify", str(tiny_mxfp4), str(other))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("trtkit: error: mismatched architectures: num_hidden_layers: reference 2, "
                                "candidate 3"), r.stderr


def test_verify_bad_ids(tiny_mxfp4, tiny_nvfp4, tmp_path):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([[1, 2, 99999]]))
    r = cli("verify", "--input-ids", str(ids), str(tiny_mxfp4), str(tiny_nvfp4))
    assert r.returncode != 0 and "99999" in r.stderr and "vocab" in r.stderr


def test_calibrated_checkpoint_is_complete(calibrated):
    ckpt = Checkpoint.open(calibrated)  # strict accounting including every _input_scale
    names = [n for n in ckpt.weight_map if n.endswith("_input_scale")]
    assert len(names) == 4
    for n in names:
        with safe_open(str(calibrated / ckpt.weight_map[n]), "pt") as f:
            t = f.get_tensor(n)
        assert t.shape == () and float(t) > 0
    manifest = json.loads((calibrated / "trtkit_manifest.json").read_text())
    q = manifest["quantization"]
    assert q["weights_only"] is False and q["calibration"]["source"].startswith("built-in default text")
    assert q["calibration"]["tokens"] > 1000


def test_calibration_sources(tiny_mxfp4, tmp_path):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([[1, 2, 3, 4, 5], [9, 8, 7]]))
    r = cli("convert", "--quiet", "--json", "--calibrate", "--calib-input-ids", str(ids), str(tiny_mxfp4),
            str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    cal = json.loads((tmp_path / "a" / "trtkit_manifest.json").read_text())["quantization"]["calibration"]
    assert (cal["sequences"], cal["tokens"]) == (2, 8)
    text = tmp_path / "t.txt"
    text.write_text("calibrate on this sentence, please. " * 20)
    r = cli("convert", "--quiet", "--calibrate", "--calib-text", str(text), str(tiny_mxfp4), str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    r = cli("convert", "--quiet", "--calib-text", str(text), str(tiny_mxfp4), str(tmp_path / "c"))
    assert r.returncode == 1 and "need --calibrate" in r.stderr


def test_calibration_without_tokenizer(tiny_mxfp4, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_mxfp4, src)
    (src / "tokenizer.json").unlink()
    r = cli("convert", "--quiet", "--calibrate", str(src), str(tmp_path / "out"))
    assert r.returncode == 1 and "tokenizer.json: not found" in r.stderr and "--calib-input-ids" in r.stderr
    assert not (tmp_path / "out").exists()


def test_calibration_with_corrupt_tokenizer(tiny_mxfp4, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_mxfp4, src)
    (src / "tokenizer.json").write_text("nope")
    r = cli("convert", "--quiet", "--calibrate", str(src), str(tmp_path / "out"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"trtkit: error: {src / 'tokenizer.json'}: cannot load the "
                                                   "tokenizer ("), r.stderr
    assert "restore tokenizer.json" in lines[0] and "--calib-input-ids" in lines[0]
    assert not (tmp_path / "out").exists()


def _set_tensor(folder: Path, name: str, value: float) -> Path:
    """Overwrite every element of tensor `name` in its shard (a real file edit); return the shard."""
    from safetensors.torch import load_file, save_file

    shard = folder / Checkpoint.open(folder).weight_map[name]
    data = load_file(shard)
    data[name].fill_(value)
    save_file(data, shard, metadata={"format": "pt"})
    return shard


@pytest.mark.parametrize("value", [0.0, -0.5])
def test_bad_input_scale_is_named_before_any_forward(tiny_mxfp4, calibrated, tmp_path, value):
    import shutil

    cand = tmp_path / "cand"
    shutil.copytree(calibrated, cand)
    name = "model.layers.1.mlp.experts.down_proj_input_scale"
    shard = _set_tensor(cand, name, value)
    ids = tmp_path / "ids.json"
    ids.write_text("[[1, 2, 3]]")
    out = tmp_path / "logits.safetensors"
    for r in (cli("verify", "--emulate-w4a4", "--num-tokens", "8", str(tiny_mxfp4), str(cand)),
              cli("forward", "--emulate-w4a4", "--input-ids", str(ids), "--out", str(out), str(cand))):
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last == (f"trtkit: error: {shard}: tensor {name} holds {value:g}; an NVFP4 activation input_scale "
                        "(the activations are divided by it) must be > 0 (recalibrate with `trtkit convert "
                        "--calibrate`, or restore the file)"), r.stderr
        assert "running reference" not in r.stderr  # refused before the reference model ran
    assert not out.exists()


def test_nan_in_candidate_names_the_candidate(tiny_mxfp4, tiny_nvfp4, tmp_path):
    import shutil

    cand = tmp_path / "cand"
    shutil.copytree(tiny_nvfp4, cand)
    name = "model.layers.0.self_attn.q_proj.weight"
    shard = _set_tensor(cand, name, float("nan"))
    r = cli("verify", "--num-tokens", "8", str(tiny_mxfp4), str(cand))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"trtkit: error: {shard}: tensor {name}: non-finite value nan at index [0, 0]"), last
    assert "source weights" not in last and "the checkpoint holding it is corrupt" in last
