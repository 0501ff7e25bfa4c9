"""Bad input to `trtkit launch` and `trtkit build`: one line naming the file and field, a non-zero exit,
no traceback. Driven through the real CLI (click's runner) on real files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from cli_runner import one_line_error, trtkit
from click.testing import CliRunner

from builder.layout import ExpertFormat
from builder.synth import SHAPES, synth_config
from recipes.errors import RecipeError
from recipes.validate import validate_folder
from trtkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
INV = Path(__file__).parent / "data" / "inventories"
CATALOG_RECIPE = ROOT / "recipes" / "catalog" / "gpt-oss-20b" / "h100" / "1k1k_balanced"


# ---- inventory YAML ----------------------------------------------------------------------------------

GOOD_GPU = "{name: NVIDIA H100 80GB HBM3, memory_gb: 79.6, compute_capability: '9.0', nvlink_links: 18}"


def inventory(tmp_path: Path, gpu: str = GOOD_GPU, extra: str = "") -> Path:
    path = tmp_path / "inv.yaml"
    path.write_text(f"hostname: n1\ndriver_version: '570.124.06'\ncuda_version: '12.8'\ngpu: {gpu}\ncount: 8\n"
                    f"{extra}")
    return path


def launch_dry(inv: Path):
    return trtkit("launch", str(CATALOG_RECIPE), "--dry-run", "--inventory", str(inv))


def test_unquoted_compute_capability_is_the_number_it_looks_like(tmp_path):
    res = launch_dry(inventory(tmp_path, GOOD_GPU.replace("'9.0'", "9.0")))
    assert res.exit_code == 0, res.output
    assert "sm 9.0" in res.stdout and "chosen: h100/balanced" in res.stdout


@pytest.mark.parametrize("gpu, extra, needle", [
    (GOOD_GPU.replace("'9.0'", "nine"), "", "gpu.compute_capability: 'nine' must be MAJOR.MINOR, like \"9.0\""),
    (GOOD_GPU.replace("79.6", "lots"), "", "gpu.memory_gb: 'lots' must be a number of GB"),
    (GOOD_GPU.replace("79.6", "-80"), "", "gpu.memory_gb: -80 must be > 0 GB"),
    (GOOD_GPU.replace("79.6", ".nan"), "", "gpu.memory_gb: nan must be a number of GB"),
    (GOOD_GPU.replace("79.6", "1" + "0" * 400), "", "gpu.memory_gb: 1000"),  # beyond float: OverflowError before
    (GOOD_GPU.replace("}", ", mig: 'no'}"), "", "gpu.mig: 'no' must be true or false (unquoted)"),
    (GOOD_GPU.replace("nvlink_links: 18", "nvlink_links: 1.5"), "", "gpu.nvlink_links: 1.5 must be a whole number"),
    (GOOD_GPU.replace("memory_gb", "memory_GB"), "", "gpu.memory_GB: unknown field"),
    (GOOD_GPU, "env: {shm_gb: big}\n", "env.shm_gb: 'big' must be a number of GB"),
    (GOOD_GPU, "env: {gdrcopy: 'yes'}\n", "env.gdrcopy: 'yes' must be true or false"),
    (GOOD_GPU, "env: [1]\n", "env must be a mapping of imex_channels, shm_gb, gdrcopy"),
    ("[1, 2]", "", "gpu must be a mapping of name, memory_gb"),
])
def test_inventory_fields_are_checked(tmp_path, gpu, extra, needle):
    inv = inventory(tmp_path, gpu, extra)
    one_line_error(launch_dry(inv), 2, f"{inv}: {needle}")


def test_inventory_mig_yaml_booleans_still_work(tmp_path):
    off = launch_dry(inventory(tmp_path, GOOD_GPU.replace("}", ", mig: no}")))
    assert off.exit_code == 0, off.output
    on = launch_dry(inventory(tmp_path, GOOD_GPU.replace("}", ", mig: true}")))
    one_line_error(on, 2, "MIG enabled on GPU(s) [0, 1, 2, 3, 4, 5, 6, 7]")


@pytest.mark.parametrize("text, needle", [
    ("gpu: {name: x\n", "line 2, column 1: invalid YAML (expected ',' or '}', but got '<stream end>'"),
    ("a: b: c\n", "line 1, column 5: invalid YAML (mapping values are not allowed here)"),
    ("driver_version: '570\n", "line 2, column 1: invalid YAML (found unexpected end of stream while scanning a quoted scalar)"),
    ("- 1\n", "the inventory must be a mapping of hostname, driver_version"),
    ("hostname: n\ndriver_version: '1'\ncuda_version: '2'\n", "give either gpus: ["),
])
def test_inventory_yaml_errors_are_one_line(tmp_path, text, needle):
    inv = tmp_path / "inv.yaml"
    inv.write_text(text)
    one_line_error(launch_dry(inv), 2, f"{inv}: {needle}")


# ---- recipe.yaml and llm_options.yaml --------------------------------------------------------------------

def edited_recipe(tmp_path: Path, edit, name: str = "recipe.yaml") -> Path:
    folder = tmp_path / "recipe"
    shutil.copytree(CATALOG_RECIPE, folder)
    doc = yaml.safe_load((folder / name).read_text())
    edit(doc)
    (folder / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def launch_recipe(target: Path):
    return trtkit("launch", str(target), "--dry-run", "--inventory", str(INV / "h100x8.yaml"))


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.pop("gpu"), "gpu: missing"),
    (lambda d: d.pop("layout"), "layout: missing"),
    (lambda d: d.update(model=None), "model: None must be a mapping"),
    (lambda d: d["gpu"].update(key="a100"), "gpu.key: 'a100' must be one of h100, h200, b200, gb200"),
    (lambda d: d["layout"].update(tensor_parallel_size="eight"),
     "layout.tensor_parallel_size: 'eight' must be a whole number >= 1"),
    (lambda d: d["layout"].update(quant_algo="FOO"), "layout.quant_algo: 'FOO' must be one of W4A16_MXFP4"),
    (lambda d: d["model"].update(checkpoint="int8"), "model.checkpoint: 'int8' must be one of nvfp4, mxfp4"),
    (lambda d: d.update(format="trtkit.recipe/99"), "format: 'trtkit.recipe/99' must be 'trtkit.recipe/1'"),
    (lambda d: d["tensorrt_llm"].update(options_file="../x.yaml"), "tensorrt_llm.options_file: '../x.yaml' must be"),
])
def test_recipe_yaml_fields_are_checked(tmp_path, edit, needle):
    folder = edited_recipe(tmp_path, edit)
    one_line_error(launch_recipe(folder), 1, f"{folder / 'recipe.yaml'}: {needle}", "regenerate it")
    with pytest.raises(RecipeError, match=re.escape(needle)):  # the same rules as the renderer's own check
        validate_folder(folder)


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(tensor_parallel_size="eight"), "tensor_parallel_size='eight' must be int"),
    (lambda d: d.pop("kv_cache_config"), "kv_cache_config: missing"),
    (lambda d: d["kv_cache_config"].update(dtype="int3"), "kv_cache_config.dtype: 'int3' must be one of fp8, auto"),
    (lambda d: d.update(max_batch_size=0), "max_batch_size=0 must be >= 1"),
])
def test_llm_options_fields_are_checked(tmp_path, edit, needle):
    folder = edited_recipe(tmp_path, edit, "llm_options.yaml")
    one_line_error(launch_recipe(folder), 1, f"{folder / 'llm_options.yaml'}: {needle}")


def test_missing_or_broken_options_file_is_named(tmp_path):
    folder = edited_recipe(tmp_path, lambda d: None)
    (folder / "llm_options.yaml").write_text("a: [\n")
    one_line_error(launch_recipe(folder), 1, f"{folder / 'llm_options.yaml'}: line 2, column 1: invalid YAML")
    (folder / "llm_options.yaml").unlink()
    one_line_error(launch_recipe(folder), 1, f"{folder / 'llm_options.yaml'}: cannot read it (No such file")


def test_recipe_yaml_file_itself_is_accepted(tmp_path):
    res = launch_recipe(CATALOG_RECIPE / "recipe.yaml")
    assert res.exit_code == 0, res.output
    assert f"chosen: h100/balanced ({CATALOG_RECIPE})" in res.stdout
    one_line_error(launch_recipe(CATALOG_RECIPE / "serve.sh"), 1, "serve.sh: a file; pass a bundle folder or a "
                   "recipe folder (the one holding recipe.yaml)")
    one_line_error(launch_recipe(tmp_path / "nothere"), 1, "nothere: no such file or folder")


# ---- starting the server -------------------------------------------------------------------------------

def test_trtllm_serve_not_on_path(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    # the release config.json of the model the recipe was planned for (launch checks it against the recipe)
    (model / "config.json").write_text(json.dumps(synth_config(SHAPES["gpt-oss-20b"].spec(), ExpertFormat.MXFP4)))
    empty = tmp_path / "bin"
    empty.mkdir()
    res = CliRunner(env={"PATH": str(empty)}).invoke(
        main, ["launch", str(CATALOG_RECIPE), "--inventory", str(INV / "h100x8.yaml"), "--model-dir", str(model)])
    one_line_error(res, 1, "trtllm-serve: not found on PATH; TensorRT-LLM is not installed here: pip install "
                   "'trtkit[gpu]'", "nvcr.io/nvidia/tensorrt-llm/release:")


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf"])
def test_ready_timeout_must_be_finite_and_positive(value):
    res = trtkit("launch", str(CATALOG_RECIPE), "--dry-run", "--inventory", str(INV / "h100x8.yaml"),
                 "--ready-timeout", value)
    one_line_error(res, 2, "--ready-timeout ", "must be a finite number of seconds > 0")


def test_dry_run_checks_an_explicit_model_dir_as_the_launch_does(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for folder, why in ((tmp_path / "nonexistent", "no such folder"), (afile, "a file, not a checkpoint folder"),
                        (tmp_path, "no config.json: not a Hugging Face checkpoint folder")):
        for extra in (("--dry-run",), ()):
            res = trtkit("launch", str(CATALOG_RECIPE), "--inventory", str(INV / "h100x8.yaml"), "--model-dir",
                         str(folder), *extra)
            one_line_error(res, 1, f"--model-dir {folder}: {why}; pass the checkpoint folder")


# ---- trtkit build: what step 4 would refuse is refused before calibration ---------------------------------

def test_build_refuses_a_workload_past_the_models_context_before_any_work(tiny_mxfp4, tmp_path):
    out = tmp_path / "engine"
    res = trtkit("build", str(tiny_mxfp4), str(out), "--isl", "100000", "--osl", "100000")
    # one line on stderr: not even "[1/5] calibrating" was logged
    one_line_error(res, 1, "ISL + OSL = 100000 + 100000 = 200000 exceeds the model's max_position_embeddings 4096",
                   "checked before any work; nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, needle", [
    (("--gpus", "h100,h100"), "--gpus h100,h100: name each of h100, h200, b200, gb200 at most once"),
    ((), "config.json: not found; a checkpoint folder needs its Hugging Face config.json"),
])
def test_build_checks_gpus_and_source_up_front(tmp_path, args, needle):
    src = tmp_path / "src"
    src.mkdir()
    one_line_error(trtkit("build", str(src), str(tmp_path / "engine"), *args), 1, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
