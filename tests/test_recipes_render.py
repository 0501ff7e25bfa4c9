"""Rendered recipe files parse, round-trip, keep the rules, and quote every shell value."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from builder.synth import SHAPES
from recipes.errors import RecipeError
from recipes.hardware import gpu
from recipes.memory import CONSTANTS, Workload
from recipes.model import resolve_model
from recipes.precision import QuantAlgo
from recipes.recipe import DYNAMO_TRTLLM, FILES, OPTIONS_FILE, TRTLLM_IMAGE, TRTLLM_VERSION, Recipe
from recipes.render import RENDERERS, recipes_of, write_picks, write_recipe
from recipes.search import PlanRequest, Profile, search
from recipes.validate import NATIVE_KEYS, validate_folder


@pytest.fixture(scope="module")
def rack(tmp_path_factory) -> dict[Profile, Path]:
    """The picks for gpt-oss-120b on a GB200 NVL72 rack (multi-node instances among them)."""
    req = PlanRequest(model=resolve_model("gpt-oss-120b"), gpu=gpu("gb200"), work=Workload(1024, 1024), gpus=72)
    return write_picks(search(req), tmp_path_factory.mktemp("rack"))


def _body(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#")) + "\n"


def test_every_file_is_written_and_validates(rack):
    assert set(RENDERERS) == set(FILES)
    for folder in rack.values():
        assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
        validate_folder(folder)
        assert os.access(folder / "serve.sh", os.X_OK)


def test_yaml_round_trips(rack):
    for folder in rack.values():
        for name in (OPTIONS_FILE, "recipe.yaml"):
            text = (folder / name).read_text()
            assert yaml.safe_dump(yaml.safe_load(text), sort_keys=False, width=120) == _body(text)
        for name in ("lws.yaml", "dynamo.yaml"):
            docs = list(yaml.safe_load_all((folder / name).read_text()))
            assert [d["kind"] for d in docs][0] == "ConfigMap" and len(docs) == 2
            assert yaml.safe_load(docs[0]["data"][OPTIONS_FILE]) == yaml.safe_load((folder / OPTIONS_FILE).read_text())


def test_options_are_native_keys_with_consistent_parallelism(rack):
    for folder in rack.values():
        opts = yaml.safe_load((folder / OPTIONS_FILE).read_text())
        assert set(opts) <= set(NATIVE_KEYS)
        assert opts["moe_expert_parallel_size"] * opts["moe_tensor_parallel_size"] == opts["tensor_parallel_size"]
        doc = yaml.safe_load((folder / "recipe.yaml").read_text())
        assert doc["gpu"]["count"] == 72 == opts["tensor_parallel_size"] * doc["gpu"]["replicas"]
        assert doc["predicted"]["arithmetic"]["gpus"].startswith("72 = ")
        assert doc["tensorrt_llm"]["version"] and doc["model"]["checkpoint"] in ("nvfp4", "mxfp4")


def test_every_image_runs_the_tensorrt_llm_release_the_options_target(rack):
    """The options are written for TRTLLM_VERSION: the trtllm-serve image is that release, and the Dynamo
    image bundles a build of the same major.minor (named, with its prerequisites, in the file's header)."""
    release = TRTLLM_VERSION.rsplit(".", 1)[0] + "."
    assert DYNAMO_TRTLLM.startswith(release) and TRTLLM_IMAGE.endswith(TRTLLM_VERSION)
    for folder in rack.values():
        text = (folder / "dynamo.yaml").read_text()
        assert f"bundles TensorRT-LLM {DYNAMO_TRTLLM}" in text.split("apiVersion")[0]
        lws = list(yaml.safe_load_all((folder / "lws.yaml").read_text()))[1]["spec"]["leaderWorkerTemplate"]
        assert lws["workerTemplate"]["spec"]["containers"][0]["image"] == TRTLLM_IMAGE


def test_multi_node_instance_uses_lws_groups_and_dynamo_multinode(rack):
    multi = [f for f in rack.values() if yaml.safe_load((f / "recipe.yaml").read_text())["gpu"]["nodes_per_instance"] > 1]
    assert multi, "on NVL72 some pick spans several 4-GPU trays"
    for folder in multi:
        doc = yaml.safe_load((folder / "recipe.yaml").read_text())
        lws = list(yaml.safe_load_all((folder / "lws.yaml").read_text()))[1]["spec"]["leaderWorkerTemplate"]
        assert lws["size"] == doc["gpu"]["nodes_per_instance"]
        assert "trtllm-llmapi-launch" in " ".join(lws["leaderTemplate"]["spec"]["containers"][0]["command"])
        dyn = list(yaml.safe_load_all((folder / "dynamo.yaml").read_text()))[1]["spec"]["services"]["TRTLLMWorker"]
        assert dyn["multinode"]["nodeCount"] == doc["gpu"]["nodes_per_instance"]
        assert "srun --mpi=pmix" in (folder / "slurm.sbatch").read_text()
        assert "exit 1" in (folder / "serve.sh").read_text()  # one node cannot hold it


@pytest.mark.parametrize("gpu_key", ["h100", "h200"])
def test_w4a4_never_on_hopper(gpu_key, tmp_path):
    req = PlanRequest(model=resolve_model("gpt-oss-20b"), gpu=gpu(gpu_key), work=Workload(1024, 1024), gpus=8)
    result = search(req)
    assert all(c.layout.quant is not QuantAlgo.NVFP4 for c in result.candidates)
    folder = write_recipe(recipes_of(result)[Profile.LATENCY], tmp_path / "r")
    doc = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert doc["layout"]["quant_algo"] == "W4A16_MXFP4" and doc["model"]["checkpoint"] == "mxfp4"
    text = (folder / "recipe.yaml").read_text().replace("quant_algo: W4A16_MXFP4", "quant_algo: NVFP4")
    (folder / "recipe.yaml").write_text(text)
    with pytest.raises(RecipeError, match="Hopper has no FP4 tensor cores"):
        validate_folder(folder)


def test_validation_rejects_broken_files(rack, tmp_path):
    src = rack[Profile.BALANCED]
    cases = {
        OPTIONS_FILE: ("num_postprocess_workers: 4", "num_postprocess_workers: 4\nbuild_engine: true",
                       "not a TensorRT-LLM LLM-API option"),
        "lws.yaml": ("max_num_tokens: ", "max_num_tokens:  ", "ConfigMap must carry"),
    }
    for name, (old, new, why) in cases.items():
        folder = tmp_path / name
        shutil.copytree(src, folder)
        text = (folder / name).read_text()
        assert old in text
        (folder / name).write_text(text.replace(old, new, 1))
        with pytest.raises(RecipeError, match=why):
            validate_folder(folder)


EVIL = "gpt oss; touch PWNED $(touch PWNED2) `id` 'q\" &"


def test_shell_metacharacters_are_quoted(tmp_path):
    """A checkpoint folder whose name is full of shell syntax reaches trtllm-serve as one literal argument."""
    ckpt = tmp_path / EVIL
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(SHAPES["gpt-oss-20b"].spec().to_config()))
    model = resolve_model(str(ckpt))
    assert model.folder_format == "bf16"
    req = PlanRequest(model=model, gpu=gpu("h100"), work=Workload(1024, 1024), gpus=8)
    folder = write_recipe(recipes_of(search(req))[Profile.THROUGHPUT], tmp_path / "recipe")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "trtllm-serve").write_text('#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n')
    (fake / "trtllm-serve").chmod(0o755)
    for script in ("serve.sh", "slurm.sbatch"):
        assert subprocess.run(["bash", "-n", str(folder / script)], capture_output=True).returncode == 0
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    env.pop("MODEL_DIR", None)
    out = subprocess.run(["bash", str(folder / "serve.sh")], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=True)
    args = json.loads(out.stdout)
    assert args[0] == f"/models/{EVIL}"            # a BF16 folder is not the MXFP4 checkpoint Hopper needs
    assert args[args.index("--served_model_name") + 1] == EVIL
    assert args[args.index("--config") + 1] == str(folder / OPTIONS_FILE)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    env["MODEL_DIR"] = str(ckpt)
    args = json.loads(subprocess.run(["bash", str(folder / "serve.sh")], capture_output=True, text=True, env=env,
                                     cwd=tmp_path, check=True).stdout)
    assert args[0] == str(ckpt)


def test_options_match_the_memory_model_and_the_curated_configs(rack):
    """CUDA graphs padded up to max_batch_size (curated gpt-oss configs); the KV fraction and dtype are the ones
    the memory model sized the batch with."""
    for folder in rack.values():
        opts = yaml.safe_load((folder / OPTIONS_FILE).read_text())
        doc = yaml.safe_load((folder / "recipe.yaml").read_text())
        assert opts["cuda_graph_config"] == {"enable_padding": True, "max_batch_size": opts["max_batch_size"]}
        assert opts["kv_cache_config"] == {"dtype": doc["layout"]["kv_cache_dtype"],
                                           "free_gpu_memory_fraction": CONSTANTS.free_gpu_memory_fraction}


def test_launchers_start_one_mpi_rank_per_gpu(rack):
    """srun and the LWS leader's mpirun start tensor_parallel_size ranks under trtllm-llmapi-launch, spread
    gpus_per_node per node; the Slurm array has one task per replica; pods land on the recipe's GPU."""
    for folder in rack.values():
        doc = yaml.safe_load((folder / "recipe.yaml").read_text())
        tp, per_node, nodes = doc["gpu"]["per_instance"], doc["gpu"]["gpus_per_node"], doc["gpu"]["nodes_per_instance"]
        slurm = (folder / "slurm.sbatch").read_text()
        assert f"#SBATCH --nodes={nodes}\n#SBATCH --ntasks-per-node={per_node}\n" in slurm and nodes * per_node == tp
        assert f"#SBATCH --array=0-{doc['gpu']['replicas'] - 1}\n" in slurm
        srun = slurm[slurm.index("srun "):]
        assert srun.startswith(f"srun --mpi=pmix --ntasks={tp} --ntasks-per-node={per_node} ")
        assert "trtllm-llmapi-launch trtllm-serve" in srun
        cm, lws = yaml.safe_load_all((folder / "lws.yaml").read_text())
        template = lws["spec"]["leaderWorkerTemplate"]
        pod = (template.get("leaderTemplate") or template["workerTemplate"])["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": gpu("gb200").k8s_product}
        if nodes > 1:
            script = pod["containers"][0]["command"][-1]
            assert f" -np {tp} " in script and script.count(f":{per_node}\"") == 2  # leader, then each worker
        cm, graph = yaml.safe_load_all((folder / "dynamo.yaml").read_text())
        cmd = graph["spec"]["services"]["TRTLLMWorker"]["extraPodSpec"]["mainContainer"]["command"]
        assert cmd[cmd.index("--extra-engine-args") + 1] == f"/config/{OPTIONS_FILE}"


def test_serve_sh_replicas_take_their_own_gpus_and_port(tmp_path):
    """Four TP2 instances share an 8-GPU B200 node: REPLICA=1 gets GPUs 2,3 and port 8001; REPLICA=4 is refused."""
    req = PlanRequest(model=resolve_model("gpt-oss-120b"), gpu=gpu("b200"), work=Workload(1024, 1024), gpus=8)
    result = search(req)
    tp2 = next(c for c in result.candidates if c.layout.tp == 2)
    r = Recipe(profile=Profile.BALANCED, model=req.model, gpu=req.gpu, work=req.work, sla=req.sla, cand=tp2)
    folder = write_recipe(r, tmp_path / "r")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "trtllm-serve").write_text("#!/usr/bin/env python3\nimport json, os, sys\n"
                                       "print(json.dumps([os.environ['CUDA_VISIBLE_DEVICES'], *sys.argv[1:]]))\n")
    (fake / "trtllm-serve").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "REPLICA": "1"}
    env.pop("PORT", None)
    out = json.loads(subprocess.run(["bash", str(folder / "serve.sh")], capture_output=True, text=True, env=env,
                                    check=True).stdout)
    assert out[0] == "2,3" and out[out.index("--port") + 1] == "8001"
    refused = subprocess.run(["bash", str(folder / "serve.sh")], capture_output=True, text=True,
                             env={**env, "REPLICA": "4"})
    assert refused.returncode == 1 and "REPLICA must be < 4" in refused.stderr
