"""Load every rendered recipe file back (yaml.safe_load) and check the rules it must keep."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from builder.numbers import finite
from builder.spec import ModelSpec
from plugins import trtllm
from recipes.errors import LayoutError, RecipeError
from recipes.hardware import Arch, gpu, gpus
from recipes.layout import Layout, check_layout
from recipes.precision import Checkpoint, KvDtype, MoeBackend, QuantAlgo
from recipes.recipe import FILES, OPTIONS_FILE, RECIPE_FORMAT, TRTLLM_VERSION
from recipes.search import Profile

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


REGENERATE = "regenerate it with trtkit plan or trtkit build"

# ---- the fields of recipe.yaml that launch and validation read: dotted path -> (rule, required) ----------
Rule = Callable[[Any], "str | None"]  # None when the value is fine, else what is wrong with it


def _mapping(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"{v!r} must be a mapping"


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else f"{v!r} must be non-empty text"


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"{v!r} must be true or false"


def _whole(minimum: int) -> Rule:
    return lambda v: (None if isinstance(v, int) and not isinstance(v, bool) and v >= minimum
                      else f"{v!r} must be a whole number >= {minimum}")


def _equals(expected: str, why: str) -> Rule:
    return lambda v: None if v == expected else f"{v!r} must be {expected!r} ({why})"


def _one_of(values: Callable[[], list[str]]) -> Rule:
    return lambda v: None if v in values() else f"{v!r} must be one of {', '.join(values())}"


def _values(enum) -> Callable[[], list[str]]:
    return lambda: [e.value for e in enum]


RECIPE_FIELDS: dict[str, tuple[Rule, bool]] = {
    "format": (_equals(RECIPE_FORMAT, "a recipe of another trtkit release"), True),
    "profile": (_one_of(_values(Profile)), True),
    "model": (_mapping, True),
    "model.checkpoint": (_one_of(_values(Checkpoint)), True),
    "model.checkpoint_path": (_text, True),
    "model.served_name": (_text, True),
    "model.config": (_mapping, True),
    "gpu": (_mapping, True),
    "gpu.key": (_one_of(lambda: list(gpus())), True),
    "gpu.name": (_text, True),
    "gpu.arch": (_one_of(_values(Arch)), True),
    **{f"gpu.{k}": (_whole(1), True) for k in ("per_instance", "nodes_per_instance", "gpus_per_node",
                                                "replicas", "count")},
    "workload": (_mapping, True),
    "workload.isl": (_whole(1), True),
    "workload.osl": (_whole(1), True),
    "layout": (_mapping, True),
    **{f"layout.{k}": (_whole(1), True) for k in ("tensor_parallel_size", "moe_expert_parallel_size",
                                                   "moe_tensor_parallel_size")},
    "layout.enable_attention_dp": (_flag, True),
    "layout.moe_backend": (_one_of(_values(MoeBackend)), True),
    "layout.quant_algo": (_one_of(_values(QuantAlgo)), True),
    "tensorrt_llm": (_mapping, True),
    "tensorrt_llm.version": (_equals(TRTLLM_VERSION, "the TensorRT-LLM release these options target"), True),
    "tensorrt_llm.options_file": (_equals(OPTIONS_FILE, "the options file beside recipe.yaml"), True),
    "launch": (_mapping, False),
    "plugin": (_mapping, False),
}
_ABSENT = object()


def _get(doc: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return _ABSENT
        doc = doc[part]
    return doc


def check_recipe_doc(path: Path, doc: Any) -> dict:
    """recipe.yaml's fields against RECIPE_FIELDS (parents are listed before their children)."""
    if not isinstance(doc, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping (format, profile, model, gpu, layout, ...); "
                          f"{REGENERATE}")
    if problem := _first_problem(doc, RECIPE_FIELDS):
        raise RecipeError(f"{path}: {problem}; {REGENERATE}")
    return doc


def _first_problem(doc: dict, table: dict) -> str | None:
    """'dotted.field: why' for the first field of `table` ({dotted: (rule, required)}) that `doc` breaks."""
    for dotted, (rule, required) in table.items():
        value = _get(doc, dotted)
        why = ("missing" if required else None) if value is _ABSENT else rule(value)
        if why:
            return f"{dotted}: {why}"
    return None


def read_yaml(path: Path, error: type[Exception] = RecipeError, fix: str = REGENERATE) -> Any:
    """One YAML document through safe_load; `error` naming the file (and `fix` when unreadable) on any failure."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise error(yaml_error(path, exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc}); {fix}") from None


def _fail(folder: Path, name: str, why: str) -> RecipeError:
    return RecipeError(f"{folder / name}: {why}")


def load(folder: Path, name: str) -> Any:
    text = (folder / name).read_text()
    docs = list(yaml.safe_load_all(text))
    return docs[0] if len(docs) == 1 else docs


def _fraction(v: Any) -> str | None:
    ok = finite(v) and 0 < v <= 1
    return None if ok else f"{v!r} must be a number in (0, 1]"


# options every recipe writes, and the nested values the checks below read
REQUIRED_OPTIONS = ("tensor_parallel_size", "moe_expert_parallel_size", "moe_tensor_parallel_size",
                    "enable_attention_dp", "max_batch_size", "max_num_tokens", "max_seq_len", "cuda_graph_config",
                    "kv_cache_config")
ZERO_OK = ("num_postprocess_workers",)  # every other integer option is >= 1
NESTED_RULES: dict[str, tuple[Rule, bool]] = {
    "cuda_graph_config.max_batch_size": (_whole(1), True),
    "cuda_graph_config.enable_padding": (_flag, False),
    "kv_cache_config.dtype": (_one_of(_values(KvDtype)), True),
    "kv_cache_config.free_gpu_memory_fraction": (_fraction, False),
    "moe_config.backend": (_text, False),
}


def check_options(folder: Path, opts: Any, doc: dict) -> None:
    if not isinstance(opts, dict):
        raise _fail(folder, OPTIONS_FILE, f"must be a YAML mapping of LLM-API options; {REGENERATE}")
    missing = [k for k in REQUIRED_OPTIONS if k not in opts]
    if missing:
        raise _fail(folder, OPTIONS_FILE, f"{missing[0]}: missing; {REGENERATE}")
    for key, val in opts.items():
        if key not in NATIVE_KEYS:
            raise _fail(folder, OPTIONS_FILE, f"key {key!r} is not a TensorRT-LLM LLM-API option we target")
        if not isinstance(val, NATIVE_KEYS[key]) or (NATIVE_KEYS[key] is int and isinstance(val, bool)):
            raise _fail(folder, OPTIONS_FILE, f"{key}={val!r} must be {NATIVE_KEYS[key].__name__}")
        if NATIVE_KEYS[key] is int and val < (0 if key in ZERO_OK else 1):
            raise _fail(folder, OPTIONS_FILE, f"{key}={val!r} must be >= {0 if key in ZERO_OK else 1}")
        if key in NESTED_KEYS and set(val) - NESTED_KEYS[key]:
            raise _fail(folder, OPTIONS_FILE, f"{key} has unknown keys {sorted(set(val) - NESTED_KEYS[key])}")
    if problem := _first_problem(opts, NESTED_RULES):
        raise _fail(folder, OPTIONS_FILE, problem)
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
    doc = check_recipe_doc(folder / "recipe.yaml", read_yaml(folder / "recipe.yaml"))
    options_text = (folder / OPTIONS_FILE).read_text()
    opts = read_yaml(folder / OPTIONS_FILE)
    check_options(folder, opts, doc)
    check_layout_rules(folder, opts, doc)
    check_manifests(folder, opts, doc, options_text)
    check_plugin(folder, doc)
    for script in ("serve.sh", "slurm.sbatch"):
        if not (folder / script).read_text().startswith("#!"):
            raise _fail(folder, script, "missing the #! line")
    return doc
