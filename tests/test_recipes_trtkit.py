"""Hopper recipes for the NVFP4 checkpoint on the trtkit::moe plugin (backend TRTKIT, W4A16_NVFP4):
the speed prior recomputed from the measured table, the rendered launchers run for real (serve.sh with
a stand-in trtllm-serve, Dynamo's module runner with stand-in modules), and validation refusing
recipes that would not load the plugin."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plugins import trtllm
from recipes.errors import RecipeError
from recipes.hardware import gpu
from recipes.memory import Workload
from recipes.model import resolve_model
from recipes.perf import plugin_speed_prior
from recipes.precision import TRTKIT_SPEED, Checkpoint, MoeBackend
from recipes.render import recipes_of, write_recipe
from recipes.search import PlanRequest, Profile, search
from recipes.validate import validate_folder

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"gpt-oss-120b": "gpt-oss-120b", "gpt-oss-20b": "gpt-oss-20b"}


def measured_moe_decode() -> list[tuple[str, int, float]]:
    """(model, batch, graph-timed us per layer) from BENCHMARKS.md's H100 MoE decode table."""
    rows = re.findall(r"^\| (gpt-oss-\d+b) \| (\d+) \| [\d.]+ \| [\d.]+ \| ([\d.]+) \|", (ROOT / "BENCHMARKS.md").read_text(),
                      re.M)
    return [(m, int(b), float(us)) for m, b, us in rows]


def test_trtkit_speed_prior_is_the_median_of_the_measured_table():
    rows = measured_moe_decode()
    assert len(rows) == 8, rows
    assert plugin_speed_prior(rows) == pytest.approx(TRTKIT_SPEED, rel=0.05), rows


def test_speed_prior_follows_the_measurements():
    """Twice as slow measured -> half the prior; the ratio is taken against the model at speed 1.0."""
    rows = measured_moe_decode()
    slower = [(m, b, 2 * us) for m, b, us in rows]
    assert plugin_speed_prior(slower) == pytest.approx(plugin_speed_prior(rows) / 2, rel=1e-9)


def bench_json(tmp_path: Path, storages: dict[str, float], gpu: str = "NVIDIA H100 80GB HBM3, 580.159.04") -> Path:
    """A bench_gpu.py --out JSON holding the measured table's points, timed x factor per storage."""
    moe = {}
    for storage, factor in storages.items():
        moe[{"kmajor": "rows", "spread": "spread_rows", "frag": "frag_rows"}[storage]] = [
            {"shape": m, "batch": b, "active_experts": 4.0, "weight_mb": 56.0, "us_graph": us * factor,
             "us_eager": 2 * us * factor, "weight_gb_s": 1000, "frac_copy_bw": 0.5,
             **({"us_dequant_baseline": 4000} if storage == "kmajor" else {})}
            for m, b, us in measured_moe_decode()]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"machine": {"gpu": gpu}, "ceilings": {"copy_gb_s": 3000.0}, "moe": moe}))
    return path


def test_moe_table_renders_the_rows_and_prior_the_test_reads(tmp_path):
    """bench/moe_table.py turns a GPU run into BENCHMARKS.md rows this test file parses, and the prior; by
    default for the storage the plugin serves with on Hopper (frag), spread's time beside it."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "moe_table.py"),
                          str(bench_json(tmp_path, {"kmajor": 2.0, "spread": 1.0, "frag": 0.5}))],  # default: frag
                         capture_output=True, text=True, check=True)
    rows = re.findall(r"^\| (gpt-oss-\d+b) \| (\d+) \| [\d.]+ \| [\d.]+ \| ([\d.]+) \|", run.stdout, re.M)
    want = [(m, b, us * 0.5) for m, b, us in measured_moe_decode()]
    assert [(m, int(b)) for m, b, _ in rows] == [(m, b) for m, b, _ in want]
    assert [float(us) for *_, us in rows] == pytest.approx([us for *_, us in want], abs=0.051)
    prior = float(re.search(r"TRTKIT_SPEED = ([\d.]+)", run.stdout).group(1))
    assert prior == pytest.approx(plugin_speed_prior(want), abs=0.005)
    assert prior == pytest.approx(2 * TRTKIT_SPEED, rel=0.05)  # twice as fast as the table measured
    assert "| spread us |" in run.stdout and "| 4000 |" in run.stdout  # the other storage and the baseline


def test_moe_table_reports_spread_when_the_run_has_no_frag_rows(tmp_path):
    """A GPU without the Gluon kernel (Blackwell, an older Triton) times no frag rows: `make bench-gpu` still prints
    a table, of the storage the plugin serves with there (spread)."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "moe_table.py"), "--json",
                          str(bench_json(tmp_path, {"kmajor": 2.0, "spread": 1.0}))],
                         capture_output=True, text=True, check=True)
    assert json.loads(run.stdout)["storage"] == "spread"


def test_moe_table_fits_the_prior_on_the_gpu_the_run_used(tmp_path):
    """An H200 run is compared with the model's H200 prediction (faster memory), not the H100's."""
    def prior(gpu_name: str) -> float:
        run = subprocess.run([sys.executable, str(ROOT / "bench" / "moe_table.py"), "--json",
                              str(bench_json(tmp_path, {"frag": 1.0}, gpu_name))],
                             capture_output=True, text=True, check=True)
        return json.loads(run.stdout)["trtkit_speed"], json.loads(run.stdout)["gpu"]

    h100, h200 = prior("NVIDIA H100 80GB HBM3, 580.159.04"), prior("NVIDIA H200, 580.159.04")
    points = measured_moe_decode()
    assert h100 == (pytest.approx(plugin_speed_prior(points, "h100"), abs=1e-3), "h100")
    assert h200 == (pytest.approx(plugin_speed_prior(points, "h200"), abs=1e-3), "h200")
    assert h200[0] < h100[0]  # the same times are slower relative to H200's faster memory
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "moe_table.py"),
                          str(bench_json(tmp_path, {"frag": 1.0}, "NVIDIA A100-SXM4-80GB"))],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "not one of the catalog's" in run.stderr and "--gpu" in run.stderr


def test_moe_table_names_a_row_without_its_figures(tmp_path):
    path = bench_json(tmp_path, {"frag": 1.0})
    doc = json.loads(path.read_text())
    del doc["moe"]["frag_rows"][3]["us_graph"]
    path.write_text(json.dumps(doc))
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "moe_table.py"), str(path)], capture_output=True,
                         text=True)
    assert run.returncode != 0 and run.stderr.strip().splitlines() == [
        "moe_table: moe.frag_rows[3] lacks us_graph; pass the JSON bench_gpu.py --out wrote, unedited"], run.stderr


def test_moe_table_names_a_storage_the_run_did_not_time(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "moe_table.py"),
                          str(bench_json(tmp_path, {"spread": 1.0})), "--storage", "kmajor"],
                         capture_output=True, text=True)
    assert run.returncode != 0 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "'rows'" in run.stderr and "--storage kmajor" in run.stderr


@pytest.fixture(scope="module")
def plugin_recipe(tmp_path_factory) -> Path:
    req = PlanRequest(model=resolve_model("gpt-oss-120b"), gpu=gpu("h100"), work=Workload(1024, 1024), gpus=8,
                      checkpoint=Checkpoint.NVFP4)
    picks = recipes_of(search(req))
    assert {r.lay.label for r in picks.values()} == {"TP1/EP1 TRTKIT W4A16_NVFP4 kv=fp8"}
    return write_recipe(picks[Profile.BALANCED], tmp_path_factory.mktemp("plugin") / "balanced")


@pytest.mark.parametrize("work", [Workload(1024, 1024), Workload(8192, 1024)])
def test_default_hopper_search_keeps_tensorrt_llms_moe(work):
    """The plugin is a candidate only when the NVFP4 checkpoint is asked for, whatever its speed prior (above
    1: faster than the model's TRITON prediction on single-GPU instances, where it would win 8k/1k picks)."""
    model = resolve_model("gpt-oss-120b")
    res = search(PlanRequest(model=model, gpu=gpu("h100"), work=work, gpus=8))
    assert all(c.layout.moe_backend is not MoeBackend.TRTKIT for c in res.candidates)
    named = search(PlanRequest(model=model, gpu=gpu("h100"), work=work, gpus=8, checkpoint=Checkpoint.NVFP4))
    assert {c.layout.moe_backend for c in named.picks.values()} == {MoeBackend.TRTKIT}


def test_options_name_no_moe_backend_and_recipe_names_the_plugin(plugin_recipe):
    opts = yaml.safe_load((plugin_recipe / "llm_options.yaml").read_text())
    assert "moe_config" not in opts and opts["tensor_parallel_size"] == 1
    doc = yaml.safe_load((plugin_recipe / "recipe.yaml").read_text())
    assert doc["plugin"]["custom_module_dirs"] == trtllm.MODULE_DIR
    assert doc["model"]["checkpoint"] == "nvfp4" and doc["layout"]["moe_backend"] == "TRTKIT"
    assert any("trtkit::moe" in n for n in doc["notes"])


def stand_in_server(tmp_path: Path) -> dict:
    """PATH with a trtllm-serve that records its argv and environment, and this python as python3."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "trtllm-serve"
    exe.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                   f"json.dump({{'argv': sys.argv[1:], 'PYTHONPATH': os.environ.get('PYTHONPATH'), "
                   f"'storage': os.environ.get('{trtllm.STORAGE_ENV}')}}, open({str(tmp_path / 'seen.json')!r}, 'w'))\n")
    exe.chmod(0o755)
    python3 = bin_dir / "python3"  # a wrapper, not a symlink: a venv's python is found by its own path
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python3.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("TRTKIT_DIR", trtllm.STORAGE_ENV, "PYTHONPATH")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def test_serve_sh_finds_trtkit_and_loads_the_plugin(plugin_recipe, tmp_path):
    env = stand_in_server(tmp_path)
    subprocess.run(["bash", str(plugin_recipe / "serve.sh")], env={**env, "REPLICA": "3"}, check=True, cwd=tmp_path)
    seen = json.loads((tmp_path / "seen.json").read_text())
    argv = seen["argv"]
    assert argv[argv.index("--custom_module_dirs") + 1] == f"{ROOT}/{trtllm.MODULE_DIR}"
    assert argv[argv.index("--port") + 1] == "8003" and argv[0] == "/models/gpt-oss-120b-nvfp4"
    assert seen["PYTHONPATH"] == f"{ROOT}:{ROOT}/plugins/trtllm" and seen["storage"] == "auto"
    # an operator's TRTKIT_DIR and storage choice win
    subprocess.run(["bash", str(plugin_recipe / "serve.sh")], check=True, cwd=tmp_path,
                   env={**env, "TRTKIT_DIR": "/opt/trtkit", trtllm.STORAGE_ENV: "kmajor", "PYTHONPATH": "/x"})
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["PYTHONPATH"] == "/opt/trtkit:/opt/trtkit/plugins/trtllm:/x" and seen["storage"] == "kmajor"
    assert seen["argv"][-1] == "/opt/trtkit/plugins/trtllm/trtllm_gptoss"


def test_slurm_needs_trtkit_dir(plugin_recipe, tmp_path):
    text = (plugin_recipe / "slurm.sbatch").read_text()
    subprocess.run(["bash", "-n", str(plugin_recipe / "slurm.sbatch")], check=True)
    assert '--container-mounts="$MODEL_DIR:$MODEL_DIR,$RECIPE_DIR:$RECIPE_DIR,$TRTKIT_DIR:$TRTKIT_DIR"' in text
    r = subprocess.run(["bash", str(plugin_recipe / "slurm.sbatch")], capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"], "SLURM_SUBMIT_DIR": str(tmp_path)})
    assert r.returncode != 0 and "set TRTKIT_DIR to a trtkit checkout" in r.stderr


def test_kubernetes_manifests_mount_trtkit(plugin_recipe):
    lws = list(yaml.safe_load_all((plugin_recipe / "lws.yaml").read_text()))[1]
    pod = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    c = pod["containers"][0]
    assert c["command"][-2:] == ["--custom_module_dirs", f"/opt/trtkit/{trtllm.MODULE_DIR}"]
    assert {"name": "PYTHONPATH", "value": "/opt/trtkit:/opt/trtkit/plugins/trtllm"} in c["env"]
    assert {"name": "trtkit", "mountPath": "/opt/trtkit", "readOnly": True} in c["volumeMounts"]
    assert {"name": "trtkit", "persistentVolumeClaim": {"claimName": "trtkit-source", "readOnly": True}} in pod["volumes"]


def test_dynamo_worker_imports_the_model_package_then_runs_dynamo(plugin_recipe, tmp_path):
    """Run the rendered worker command against stand-in `trtllm_gptoss` and `dynamo.trtllm` modules."""
    worker = list(yaml.safe_load_all((plugin_recipe / "dynamo.yaml").read_text()))[1]
    main = worker["spec"]["services"]["TRTLLMWorker"]["extraPodSpec"]["mainContainer"]
    (tmp_path / "trtllm_gptoss").mkdir()
    (tmp_path / "trtllm_gptoss" / "__init__.py").write_text("import os\nos.environ['REGISTERED'] = '1'\n")
    (tmp_path / "dynamo").mkdir()
    (tmp_path / "dynamo" / "__init__.py").write_text("")
    (tmp_path / "dynamo" / "trtllm.py").write_text(
        "import json, os, sys\nif __name__ == '__main__':\n"
        "    print(json.dumps({'argv': sys.argv[1:], 'registered': os.environ.get('REGISTERED')}))\n")
    cmd = [sys.executable, *main["command"][1:]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    seen = json.loads(out.stdout)
    assert seen["registered"] == "1" and seen["argv"][:2] == ["--model-path", "/models/gpt-oss-120b-nvfp4"]
    assert main["env"][0] == {"name": "PYTHONPATH", "value": "/opt/trtkit:/opt/trtkit/plugins/trtllm"}


@pytest.mark.parametrize("file, edit, message", [
    ("serve.sh", lambda t: t.replace(" --custom_module_dirs", " --custom-dirs").replace("trtllm_gptoss", "x"),
     "serve.sh: does not load the trtkit::moe plugin"),
    ("llm_options.yaml", lambda t: t + "moe_config:\n  backend: TRITON\n",
     "moe_config.backend 'TRITON' does not match recipe.yaml's moe_backend TRTKIT"),
    ("recipe.yaml", lambda t: t.replace("custom_module_dirs: plugins/trtllm/trtllm_gptoss", "custom_module_dirs: x"),
     "plugin.custom_module_dirs must be plugins/trtllm/trtllm_gptoss"),
])
def test_validation_refuses_a_plugin_recipe_that_would_not_load_it(plugin_recipe, tmp_path, file, edit, message):
    folder = tmp_path / "r"
    shutil.copytree(plugin_recipe, folder)
    (folder / file).write_text(edit((folder / file).read_text()))
    with pytest.raises(RecipeError, match=re.escape(message)):
        validate_folder(folder)
