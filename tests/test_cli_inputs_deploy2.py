"""More bad input to `trtkit plan` and `trtkit launch`: one line naming the file or flag, a non-zero exit,
no traceback, nothing written. Driven through the real CLI (click's runner) on real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_runner import one_line_error, trtkit

from builder.manifest import listing_checksum
from trtkit.cli_plan import MAX_GPUS

ROOT = Path(__file__).resolve().parents[1]
INV = Path(__file__).parent / "data" / "inventories"


# ---- plan --model FOLDER with a damaged trtkit_manifest.json ----------------------------------------------

@pytest.mark.parametrize("text, needle", [
    ("{", "not a readable JSON manifest"),
    ("[1]", "'files' must map file names to sha256 strings"),
    ('{"files": [1, 2]}', "'files' must map file names to sha256 strings"),
    ('{"files": {"a": 1}}', "'files' must map file names to sha256 strings"),
])
def test_plan_names_a_corrupt_checkpoint_manifest(tiny_nvfp4, tmp_path, text, needle):
    folder = tmp_path / "nvm"
    shutil.copytree(tiny_nvfp4, folder)
    (folder / "trtkit_manifest.json").write_text(text)
    res = trtkit("plan", "estimate", "--model", str(folder), "--gpu", "b200", "--tp", "1", "--batch", "8",
                 "--isl", "512", "--osl", "128")
    one_line_error(res, 1, f"{folder}/trtkit_manifest.json: ", needle, "rerun trtkit convert")


# ---- plan --gpus HUGE: instance sizes come from the NVLink domain, not a scan up to the fleet size ---------

def test_plan_with_the_largest_fleet_answers_at_once(tmp_path):
    out = tmp_path / "plan"
    proc = subprocess.run([sys.executable, "-m", "trtkit.cli", "plan", "--model", "gpt-oss-20b", "--gpu", "h100",
                           "--gpus", str(MAX_GPUS), "--isl", "1024", "--osl", "256", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) and (out / "balanced").is_dir()


def test_plan_refuses_a_fleet_beyond_any_cluster(tmp_path):
    res = trtkit("plan", "--model", "gpt-oss-20b", "--gpu", "h100", "--gpus", str(10**18), "--isl", "1024",
                 "--osl", "256", "--out", str(tmp_path / "plan"))
    assert res.exit_code == 2 and "Invalid value for '--gpus'" in res.stderr, res.output
    assert f"1<=x<={MAX_GPUS}" in res.stderr and not (tmp_path / "plan").exists()


# ---- plan SLA flags: a finite number > 0 (nan compared false with every bound and read as an SLA) --------

@pytest.mark.parametrize("flag", ["--max-ttft-ms", "--max-tpot-ms", "--min-tps-user"])
@pytest.mark.parametrize("value, needle", [("nan", "is not a finite number"), ("inf", "is not a finite number"),
                                           ("0", "is not in the range x>0")])
def test_plan_sla_flags_must_be_finite_and_positive(tmp_path, flag, value, needle):
    out = tmp_path / "plan"
    res = trtkit("plan", "--model", "gpt-oss-20b", "--gpu", "h100", "--gpus", "8", "--isl", "1024", "--osl", "256",
                 flag, value, "--out", str(out))
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '{flag}'" in res.stderr and needle in res.stderr, res.stderr
    assert "Traceback" not in res.output and not out.exists()


# ---- plan --model NVFP4-FOLDER --checkpoint mxfp4: the hash belongs to the folder, not to /models/NAME ------

@pytest.mark.parametrize("kind", ["mxfp4", "nvfp4", None])
def test_plan_records_a_checkpoint_hash_only_for_the_folder_it_serves(tiny_nvfp4, tmp_path, kind):
    out = tmp_path / "plan"
    res = trtkit("plan", "--model", str(tiny_nvfp4), "--gpu", "h100", "--gpus", "8", "--isl", "1024", "--osl", "256",
                 "--out", str(out), *(("--checkpoint", kind) if kind else ()))
    assert res.exit_code == 0, res.output
    manifest = json.loads((tiny_nvfp4 / "trtkit_manifest.json").read_text())
    models = [yaml.safe_load((p / "recipe.yaml").read_text())["model"] for p in sorted(out.iterdir()) if p.is_dir()]
    assert models and (kind is None or {m["checkpoint"] for m in models} == {kind})
    for m in models:
        if m["checkpoint"] == "nvfp4":   # served from the folder itself
            assert m["checkpoint_path"] == str(tiny_nvfp4.resolve())
            assert m["checkpoint_hash"] == listing_checksum(manifest["files"])
        else:                            # another folder, still to be made: no hash to promise
            assert m["checkpoint_path"] != str(tiny_nvfp4.resolve()) and m["checkpoint_hash"] is None, m


# ---- launch --model-dir: the checkpoint must be the one the recipe was planned for ------------------------

@pytest.fixture(scope="module")
def bundle(tiny_mxfp4, tmp_path_factory) -> Path:
    from deploy.build import BuildOptions, build

    out = tmp_path_factory.mktemp("bundle") / "engine"
    build(tiny_mxfp4, out, BuildOptions(), log=lambda m: None)
    return out


def more_layers(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["num_hidden_layers"] *= 2
    cfg["layer_types"] = cfg["layer_types"] * 2
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("dry", [True, False])
def test_launch_refuses_a_model_dir_the_recipe_was_not_planned_for(bundle, tiny_mxfp4, tmp_path, dry):
    h100 = ("--inventory", str(INV / "h100x8.yaml"))
    catalog = ROOT / "recipes" / "catalog" / "gpt-oss-20b" / "h100" / "1k1k_balanced"
    cases = [
        ((str(bundle / "recipes" / "h100" / "latency-nvfp4"), "--model-dir", str(tiny_mxfp4)),
         (f"--model-dir {tiny_mxfp4}: holds the MXFP4 checkpoint, but recipe ", "latency-nvfp4/recipe.yaml serves "
          "the NVFP4 one; pass the NVFP4 checkpoint folder")),
        ((str(bundle), "--checkpoint", "mxfp4", "--model-dir", str(bundle / "checkpoint")),
         (f"--model-dir {bundle / 'checkpoint'}: holds the NVFP4 checkpoint", "serves the MXFP4 one")),
        ((str(bundle), "--model-dir", str(more_layers(tiny_mxfp4, tmp_path / "deeper"))),
         ("config.json has num_hidden_layers=4, but recipe ", "was planned for num_hidden_layers=2")),
        ((str(catalog), "--model-dir", str(tiny_mxfp4)),
         ("config.json has num_hidden_layers=2", "1k1k_balanced/recipe.yaml was planned for num_hidden_layers=24 "
          "(model gpt-oss-20b)")),
    ]
    for args, needles in cases:
        res = trtkit("launch", *args, *h100, *(("--dry-run",) if dry else ()))
        one_line_error(res, 1, *needles)


def test_launch_with_a_matching_model_dir_still_runs(bundle, tiny_mxfp4):
    for args in ((str(bundle), "--model-dir", str(tiny_mxfp4)),
                 (str(bundle), "--checkpoint", "nvfp4", "--model-dir", str(bundle / "checkpoint")),
                 (str(bundle),)):
        res = trtkit("launch", *args, "--dry-run", "--inventory", str(INV / "h100x8.yaml"))
        assert res.exit_code == 0, res.output
    # the NVFP4 folder given without --checkpoint: an NVFP4 recipe is chosen for it
    res = trtkit("launch", str(bundle), "--dry-run", "--inventory", str(INV / "h100x8.yaml"), "--model-dir",
                 str(bundle / "checkpoint"))
    assert res.exit_code == 0 and "nvfp4 via trtkit::moe" in res.stdout.split("chosen: ")[1], res.output
