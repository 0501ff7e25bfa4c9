"""Load every rendered recipe file back (yaml.safe_load) and check the rules it must keep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from builder.spec import ModelSpec
from plugins import trtllm
from recipes.errors import LayoutError, RecipeError
from recipes.hardware import Arch, gpu
from recipes.layout import Layout, check_layout
from recipes.precision import KvDtype, MoeBackend, QuantAlgo
from recipes.recipe import FILES, OPTIONS_FILE, RECIPE_FORMAT, TRTLLM_VERSION

# LLM-API keys a recipe may write (TensorRT-LLM llm_args; unknown keys are errors in recent releases)
NATIVE_KEYS = {
    "tensor_parallel_size": int, "moe_expert_parallel_size": int, "moe_tensor_parallel_size": int,
    "enable_attention_dp": bool, "attention_dp_config": dict, "max_batch_size": int, "max_num_tokens": int,
    "max_seq_len": int, "moe_config": dict, "cuda_graph_config": dict, "kv_cache_config": dict,
    "stream_interval": int, "num_postprocess_workers": int,
}
NESTED_KEYS = {
    "moe_config": {"backend"},
    "cuda_graph_config": {"enable_padding", "max_batch_size"},
    "kv_cache_config": {"dtype", "free_gpu_memory_fraction"},
    "attention_dp_config": {"enable_balance", "batching_wait_iters", "timeout_iters"},
}


def yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: the file, line and column, and what the parser expected."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = getattr(exc, "problem", None) or " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return f"{path}: {where}invalid YAML ({what}{f' {context}' if context else ''}); fix the file's syntax"


def _fail(folder: Path, name: str, why: str) -> RecipeError:
    return RecipeError(f"{folder / name}: {why}")


def load(folder: Path, name: str) -> Any:
    text = (folder / name).read_text()
    docs = list(yaml.safe_load_all(text))
    return docs[0] if len(docs) == 1 else docs


def check_options(folder: Path, opts: dict, doc: dict) -> None:
    for key, val in opts.items():
        if key not in NATIVE_KEYS:
            raise _fail(folder, OPTIONS_FILE, f"key {key!r} is not a TensorRT-LLM LLM-API option we target")
        if not isinstance(val, NATIVE_KEYS[key]) or (NATIVE_KEYS[key] is int and isinstance(val, bool)):
            raise _fail(folder, OPTIONS_FILE, f"{key}={val!r} must be {NATIVE_KEYS[key].__name__}")
        if key in NESTED_KEYS and set(val) - NESTED_KEYS[key]:
            raise _fail(folder, OPTIONS_FILE, f"{key} has unknown keys {sorted(set(val) - NESTED_KEYS[key])}")
    tp, ep, mtp = opts["tensor_parallel_size"], opts["moe_expert_parallel_size"], opts["moe_tensor_parallel_size"]
    if ep * mtp != tp:
        raise _fail(folder, OPTIONS_FILE, f"moe_expert_parallel_size {ep} x moe_tensor_parallel_size {mtp} "
                    f"= {ep * mtp} != tensor_parallel_size {tp}")
    if opts["cuda_graph_config"]["max_batch_size"] > opts["max_batch_size"]:
        raise _fail(folder, OPTIONS_FILE, "cuda_graph_config.max_batch_size exceeds max_batch_size")
    work = doc["workload"]
    if opts["max_seq_len"] != work["isl"] + work["osl"]:
        raise _fail(folder, OPTIONS_FILE, f"max_seq_len {opts['max_seq_len']} != ISL {work['isl']} + OSL "
                    f"{work['osl']}")
    if opts["max_num_tokens"] < work["isl"] + opts["max_batch_size"]:
        raise _fail(folder, OPTIONS_FILE, f"max_num_tokens {opts['max_num_tokens']} < ISL {work['isl']} + "
                    f"max_batch_size {opts['max_batch_size']}: a prompt would not fit one iteration")
    if opts["enable_attention_dp"] != ("attention_dp_config" in opts):
        raise _fail(folder, OPTIONS_FILE, "attention_dp_config must be present exactly when attention DP is on")


def check_layout_rules(folder: Path, opts: dict, doc: dict) -> None:
    g = gpu(doc["gpu"]["key"])
    quant = QuantAlgo(doc["layout"]["quant_algo"])
    if g.arch is Arch.HOPPER and quant is QuantAlgo.NVFP4:
        raise _fail(folder, "recipe.yaml", f"NVFP4 W4A4 on {g.name}: Hopper has no FP4 tensor cores")
    backend = MoeBackend(doc["layout"]["moe_backend"])
    named = (opts.get("moe_config") or {}).get("backend")
    if named != (None if backend.is_plugin else backend.value):
        raise _fail(folder, OPTIONS_FILE, f"moe_config.backend {named!r} does not match recipe.yaml's "
                    f"moe_backend {backend.value} (a plugin backend names none)")
    lay = Layout(tp=opts["tensor_parallel_size"], ep=opts["moe_expert_parallel_size"],
                 attention_dp=opts["enable_attention_dp"], moe_backend=backend,
                 quant=quant, kv_dtype=KvDtype(opts["kv_cache_config"]["dtype"]))
    try:
        check_layout(lay, _spec(doc), g)
    except LayoutError as exc:
        raise _fail(folder, OPTIONS_FILE, str(exc)) from exc
    if doc["gpu"]["count"] != doc["gpu"]["per_instance"] * doc["gpu"]["replicas"]:
        raise _fail(folder, "recipe.yaml", "gpu.count != per_instance x replicas")


def _spec(doc: dict) -> ModelSpec:
    """The model as the recipe states it (model.config), not as a folder on this machine says."""
    return ModelSpec.from_config(doc["model"]["config"], source="recipe.yaml model.config")


def check_manifests(folder: Path, opts: dict, doc: dict, options_text: str) -> None:
    per_node, nodes, replicas = doc["gpu"]["gpus_per_node"], doc["gpu"]["nodes_per_instance"], doc["gpu"]["replicas"]
    for name, kind in (("lws.yaml", "LeaderWorkerSet"), ("dynamo.yaml", "DynamoGraphDeployment")):
        cm, main = load(folder, name)
        if cm["kind"] != "ConfigMap" or cm["data"][OPTIONS_FILE] != options_text:
            raise _fail(folder, name, f"the ConfigMap must carry {OPTIONS_FILE} byte for byte")
        if main["kind"] != kind:
            raise _fail(folder, name, f"second document is {main['kind']}, expected {kind}")
    lws = load(folder, "lws.yaml")[1]["spec"]
    pod = lws["leaderWorkerTemplate"].get("leaderTemplate") or lws["leaderWorkerTemplate"]["workerTemplate"]
    gpus = pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    if lws["leaderWorkerTemplate"]["size"] * gpus != opts["tensor_parallel_size"] or lws["replicas"] != replicas:
        raise _fail(folder, "lws.yaml", f"size x GPUs per pod = {lws['leaderWorkerTemplate']['size']} x {gpus} "
                    f"must equal tensor_parallel_size {opts['tensor_parallel_size']}, replicas {replicas}")
    worker = load(folder, "dynamo.yaml")[1]["spec"]["services"]["TRTLLMWorker"]
    count = worker.get("multinode", {}).get("nodeCount", 1)
    if int(worker["resources"]["limits"]["gpu"]) * count != per_node * nodes or worker["replicas"] != replicas:
        raise _fail(folder, "dynamo.yaml", "TRTLLMWorker GPUs x nodeCount must equal the instance size")


def check_plugin(folder: Path, doc: dict) -> None:
    """A plugin backend's launchers all load the trtkit model package; no other recipe mentions it."""
    plugin = MoeBackend(doc["layout"]["moe_backend"]).is_plugin
    if plugin and (doc.get("plugin") or {}).get("custom_module_dirs") != trtllm.MODULE_DIR:
        raise _fail(folder, "recipe.yaml", f"plugin.custom_module_dirs must be {trtllm.MODULE_DIR}")
    for name in ("serve.sh", "slurm.sbatch", "lws.yaml", "dynamo.yaml"):
        text = (folder / name).read_text()
        if (trtllm.PACKAGE in text) != plugin:
            raise _fail(folder, name, f"{'does not load' if plugin else 'loads'} the trtkit::moe plugin "
                        f"({trtllm.PACKAGE}) but moe_backend is {doc['layout']['moe_backend']}")


def validate_folder(folder: Path) -> dict:
    """Check one recipe folder; return its recipe.yaml. Raises RecipeError naming the file and rule."""
    folder = Path(folder)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise RecipeError(f"{folder}: missing {missing}")
    doc = load(folder, "recipe.yaml")
    if doc.get("format") != RECIPE_FORMAT or doc["tensorrt_llm"]["version"] != TRTLLM_VERSION:
        raise _fail(folder, "recipe.yaml", f"format {doc.get('format')!r} / TensorRT-LLM "
                    f"{doc['tensorrt_llm']['version']!r}, expected {RECIPE_FORMAT} / {TRTLLM_VERSION}")
    options_text = (folder / OPTIONS_FILE).read_text()
    opts = yaml.safe_load(options_text)
    check_options(folder, opts, doc)
    check_layout_rules(folder, opts, doc)
    check_manifests(folder, opts, doc, options_text)
    check_plugin(folder, doc)
    for script in ("serve.sh", "slurm.sbatch"):
        if not (folder / script).read_text().startswith("#!"):
            raise _fail(folder, script, "missing the #! line")
    return doc
