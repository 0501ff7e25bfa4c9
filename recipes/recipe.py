"""A recipe: one picked deployment, rendered to the files TensorRT-LLM, Slurm, Kubernetes and Dynamo
consume as they are. This module holds the value object, the TensorRT-LLM options and `recipe.yaml`;
`launch.py` renders the shell scripts and `k8s.py` the manifests. All YAML goes through
yaml.safe_dump (read back with yaml.safe_load by `validate.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from builder.spec import ModelSpec
from plugins import trtllm
from recipes.hardware import GpuSpec
from recipes.memory import CONSTANTS, Workload, max_num_tokens
from recipes.model import ModelRef
from recipes.precision import Checkpoint
from recipes.search import Candidate, Profile, Sla

TRTLLM_VERSION = "1.2.0"  # the TensorRT-LLM release whose LLM-API keys and trtllm-serve flags we target
TRTLLM_IMAGE = f"nvcr.io/nvidia/tensorrt-llm/release:{TRTLLM_VERSION}"
# the Dynamo release nearest TRTLLM_VERSION: its image bundles TensorRT-LLM 1.2.0rc6.post3 (Dynamo's
# docs/reference/support-matrix.md; no Dynamo release bundles 1.2.0 itself, and 0.5.1 bundled 1.1.0rc5)
DYNAMO_VERSION = "0.8.1.post3"
DYNAMO_TRTLLM = "1.2.0rc6.post3"
DYNAMO_IMAGE = f"nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:{DYNAMO_VERSION}"
RECIPE_FORMAT = "trtkit.recipe/1"
OPTIONS_FILE = "llm_options.yaml"
FILES = (OPTIONS_FILE, "serve.sh", "slurm.sbatch", "lws.yaml", "dynamo.yaml", "recipe.yaml")
STREAM_INTERVAL = 20          # tokens per streamed chunk (TensorRT-LLM curated gpt-oss configs)
POSTPROCESS_WORKERS = 4
ADP_BALANCE = {"enable_balance": True, "batching_wait_iters": 50, "timeout_iters": 1}
PORT = 8000


@dataclass(frozen=True)
class Recipe:
    profile: Profile
    model: ModelRef
    gpu: GpuSpec
    work: Workload
    sla: Sla
    cand: Candidate

    @property
    def lay(self):
        return self.cand.layout

    @property
    def checkpoint(self) -> Checkpoint:
        return self.lay.quant_spec.checkpoint

    @property
    def max_num_tokens(self) -> int:
        return max_num_tokens(self.cand.batch, self.work)

    @property
    def hosts(self) -> int:
        """Nodes one instance spans."""
        return self.gpu.hosts(self.lay.tp)

    @property
    def gpus_per_node(self) -> int:
        """GPUs one instance uses on each of its nodes."""
        return min(self.lay.tp, self.gpu.gpus_per_host)

    @property
    def name(self) -> str:
        """DNS-1123 name for jobs and Kubernetes objects."""
        plugin = "-nvfp4" if self.lay.moe_backend.is_plugin else ""  # beside the same profile's MXFP4 recipe
        raw = f"trtkit-{self.model.name}-{self.gpu.key}-{self.work.tag}-{self.profile.value}{plugin}"
        return re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:63].rstrip("-")

    @property
    def served_name(self) -> str:
        return self.model.hf_id or self.model.name

    @property
    def model_dir(self) -> str:
        """Where the recipe expects the checkpoint (the folder given, when it is the right format)."""
        if self.model.path and self.model.folder_format == self.checkpoint.value:
            return self.model.path
        suffix = "-nvfp4" if self.checkpoint is Checkpoint.NVFP4 else ""
        return f"/models/{self.model.name}{suffix}"

    @property
    def checkpoint_hash(self) -> str | None:
        """The folder's manifest hash, only when the recipe serves that folder itself (`model_dir`): a recipe
        for the other checkpoint kind points at a folder still to be made, whose hash nobody knows yet."""
        return self.model.checkpoint_hash if self.model_dir == self.model.path else None


def options(r: Recipe) -> dict[str, Any]:
    """TensorRT-LLM LLM-API options (native keys only), as `trtllm-serve --config` reads them."""
    lay, c = r.lay, r.cand
    out: dict[str, Any] = {
        "tensor_parallel_size": lay.tp,
        "moe_expert_parallel_size": lay.ep,
        "moe_tensor_parallel_size": lay.moe_tp,
        "enable_attention_dp": lay.attention_dp,
        "max_batch_size": c.batch,
        "max_num_tokens": r.max_num_tokens,
        "max_seq_len": r.work.seq_len,
        # a plugin backend replaces TensorRT-LLM's MoE module: there is no moe_config.backend to name
        **({} if lay.moe_backend.is_plugin else {"moe_config": {"backend": lay.moe_backend.value}}),
        "cuda_graph_config": {"enable_padding": True, "max_batch_size": c.batch},
        "kv_cache_config": {"dtype": lay.kv_dtype.value,
                            "free_gpu_memory_fraction": CONSTANTS.free_gpu_memory_fraction},
        "stream_interval": STREAM_INTERVAL,
        "num_postprocess_workers": POSTPROCESS_WORKERS,
    }
    if lay.attention_dp:
        out["attention_dp_config"] = dict(ADP_BALANCE)
    return out


def plugin_doc(r: Recipe) -> dict[str, Any] | None:
    """How the serve command loads trtkit's MoE (plugin backends only); paths relative to the trtkit root
    (TRTKIT_DIR, the folder holding plugins/)."""
    if not r.lay.moe_backend.is_plugin:
        return None
    return {"custom_module_dirs": trtllm.MODULE_DIR, "pythonpath": list(trtllm.PYTHONPATH),
            "env": {trtllm.STORAGE_ENV: trtllm.STORAGES[0]},
            "needs": "trtkit importable in the serving environment (pip install 'trtkit[gpu]', or a checkout)"}


def options_yaml(r: Recipe) -> str:
    lay, c, w = r.lay, r.cand, r.work
    per = "per rank (attention DP)" if lay.attention_dp else "per instance"
    header = [
        f"# TensorRT-LLM {TRTLLM_VERSION} options: {r.model.name} on {lay.tp} x {r.gpu.name}, profile "
        f"{r.profile.value}",
        f"# trtllm-serve {r.model_dir} --config {OPTIONS_FILE}   (before 1.2: --extra_llm_api_options)",
        f"# tensor_parallel_size {lay.tp} = moe_expert_parallel_size {lay.ep} x moe_tensor_parallel_size "
        f"{lay.moe_tp}",
        f"# max_batch_size {c.batch} {per}; concurrency {c.concurrency} = {c.batch} x {lay.dp} rank(s)",
        f"# max_num_tokens {r.max_num_tokens} = max({CONSTANTS.min_max_num_tokens}, roundup(ISL {w.isl} + "
        f"batch {c.batch}, 1024)): a whole prompt plus every decode token fits one iteration",
        f"# max_seq_len {w.seq_len} = ISL {w.isl} + OSL {w.osl}",
        f"# experts {lay.quant.value} from the {r.checkpoint.value} checkpoint (read from the checkpoint, "
        f"not an option)",
    ]
    if lay.moe_backend.is_plugin:
        header.append(f"# MoE: trtkit::moe (no moe_config): trtllm-serve ... --custom_module_dirs "
                      f"$TRTKIT_DIR/{trtllm.MODULE_DIR}, see serve.sh")
    return "\n".join(header) + "\n" + yaml.safe_dump(options(r), sort_keys=False)


SHAPE_KEYS = ("model_type", "num_hidden_layers", "num_local_experts", "num_experts_per_tok", "hidden_size",
              "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
              "sliding_window", "max_position_embeddings", "rope_theta")


def model_shape(spec: ModelSpec) -> dict[str, Any]:
    """The config.json facts the layout rules and the memory model depend on (validation rebuilds the
    spec from them, so a recipe checks without the checkpoint at hand)."""
    cfg = spec.to_config()
    return {k: cfg[k] for k in SHAPE_KEYS}


def _predicted(r: Recipe) -> dict[str, Any]:
    c, lay, w = r.cand, r.lay, r.work
    return {
        "ttft_ms": round(c.ttft_ms, 2), "tpot_ms": round(c.tpot_ms, 3),
        "tps_per_user": round(c.tps_per_user, 1), "tps_per_gpu": round(c.tps_per_gpu, 1),
        "tps_per_instance": round(c.tps_instance, 1), "tps_fleet": round(c.tps_fleet, 1),
        "users_fleet": c.users, "max_concurrency_per_instance": c.max_concurrency,
        "arithmetic": {
            "tps_per_user": f"{c.tps_per_user:.1f} = 1000 / TPOT {c.tpot_ms:.3f} ms",
            "tps_per_gpu": f"{c.tps_per_gpu:.1f} = {c.tps_instance:.1f} tokens/s per instance / {lay.tp} GPUs",
            "tps_per_instance": (f"{c.tps_instance:.1f} = {c.concurrency} sequences x OSL {w.osl} / "
                                 f"(TTFT + (OSL - 1) x TPOT) = {c.concurrency} x {w.osl} / "
                                 f"{(c.ttft_ms + (w.osl - 1) * c.tpot_ms) / 1e3:.3f} s"),
            "tps_fleet": f"{c.tps_fleet:.1f} = {c.tps_instance:.1f} x {c.replicas} replicas",
            "users_fleet": f"{c.users} = {c.batch} max_batch_size x {lay.dp} rank(s) x {c.replicas} replicas",
            "gpus": f"{c.fleet_gpus} = {lay.tp} GPUs per instance x {c.replicas} replicas",
        },
        "model": "recipes.perf + recipes.estimate, calibrated in recipes/CALIBRATION.md",
    }


def recipe_doc(r: Recipe) -> dict[str, Any]:
    lay, c = r.lay, r.cand
    prepare = None
    if r.checkpoint is Checkpoint.NVFP4:
        prepare = f"trtkit convert --calibrate <gpt-oss release folder> {r.model_dir}"
    return {
        "format": RECIPE_FORMAT,
        "profile": r.profile.value,
        "model": {"name": r.model.name, "served_name": r.served_name, "checkpoint": r.checkpoint.value,
                  "checkpoint_path": r.model_dir, "checkpoint_hash": r.checkpoint_hash,
                  "prepare": prepare, "config": model_shape(r.model.spec)},
        "gpu": {"key": r.gpu.key, "name": r.gpu.name, "arch": r.gpu.arch.value,
                "per_instance": lay.tp, "nodes_per_instance": r.hosts, "gpus_per_node": r.gpus_per_node,
                "replicas": c.replicas, "count": c.fleet_gpus, "nvlink_domain": r.gpu.nvlink_domain},
        "workload": {"isl": r.work.isl, "osl": r.work.osl, "concurrency_per_instance": c.concurrency,
                     "sla": {"max_ttft_ms": r.sla.max_ttft_ms, "max_tpot_ms": r.sla.max_tpot_ms,
                             "min_tps_user": r.sla.min_tps_user}},
        "layout": {"tensor_parallel_size": lay.tp, "moe_expert_parallel_size": lay.ep,
                   "moe_tensor_parallel_size": lay.moe_tp, "enable_attention_dp": lay.attention_dp,
                   "moe_backend": lay.moe_backend.value, "quant_algo": lay.quant.value,
                   "kv_cache_dtype": lay.kv_dtype.value, "max_batch_size": c.batch,
                   "max_num_tokens": r.max_num_tokens, "max_seq_len": r.work.seq_len},
        "predicted": _predicted(r),
        "tensorrt_llm": {"version": TRTLLM_VERSION, "image": TRTLLM_IMAGE, "options_file": OPTIONS_FILE},
        **({"plugin": plugin_doc(r)} if r.lay.moe_backend.is_plugin else {}),
        "files": list(FILES),
        "notes": _notes(r),
    }


def _notes(r: Recipe) -> list[str]:
    notes = [f"{r.cand.replicas} replica(s) behind a router (round robin or KV-aware); each replica "
             f"is one TensorRT-LLM instance of {r.lay.tp} GPU(s) inside one NVLink domain"]
    if r.hosts > 1:
        notes.append(f"one instance spans {r.hosts} nodes of {r.gpus_per_node} GPUs over multi-node "
                     f"NVLink: IMEX channels in the container (Kubernetes: a ComputeDomain), large /dev/shm")
    if r.lay.attention_dp and r.lay.ep > 1:
        notes.append("attention DP + expert parallel: balance on (attention_dp_config); "
                     "online expert load balancing would need GDRCopy")
    if r.checkpoint is Checkpoint.MXFP4:
        notes.append(f"serves the MXFP4 release checkpoint as {r.lay.quant.value}"
                     + (" (Hopper: no FP4 tensor cores; NVFP4 W4A4 never runs here)"
                        if r.gpu.arch.value == "hopper" else ""))
    if r.lay.moe_backend.is_plugin:
        notes.append(f"serves the NVFP4 checkpoint on {r.gpu.name} with NVFP4 weights decoded to BF16 in "
                     f"trtkit::moe (Hopper has no FP4 tensor cores and TensorRT-LLM no NVFP4 MoE for gpt-oss "
                     f"here): one GPU per instance, trtkit importable where it runs (TRTKIT_DIR)")
    return notes


def recipe_yaml(r: Recipe) -> str:
    header = (f"# trtkit recipe {r.profile.value}: {r.model.name} on {r.cand.fleet_gpus} x {r.gpu.name}, "
              f"ISL {r.work.isl} / OSL {r.work.osl}\n")
    return header + yaml.safe_dump(recipe_doc(r), sort_keys=False, width=120)
