"""Shell launchers of a recipe: `serve.sh` (one node) and `slurm.sbatch` (srun + trtllm-llmapi-launch).

Every value that reaches the shell goes through shlex.quote; defaults are overridable by environment
variables (MODEL_DIR, PORT, REPLICA, CONTAINER_IMAGE, RECIPE_DIR, and TRTKIT_DIR for the trtkit::moe
plugin) whose expansions are always quoted.
"""

from __future__ import annotations

import re
from shlex import quote

from plugins import trtllm
from recipes.recipe import OPTIONS_FILE, PORT, TRTLLM_IMAGE, Recipe


def _summary(r: Recipe) -> list[str]:
    c, lay = r.cand, r.lay
    return [
        f"# trtkit recipe {r.profile.value}: {r.model.name} on {lay.tp} x {r.gpu.name} per instance, "
        f"{c.replicas} replica(s), ISL {r.work.isl} / OSL {r.work.osl}",
        f"# predicted per user {c.tps_per_user:.1f} tokens/s (TPOT {c.tpot_ms:.2f} ms), TTFT {c.ttft_ms:.1f} ms, "
        f"{c.tps_per_gpu:.0f} tokens/s/GPU at {c.concurrency} requests per instance",
    ]


def _default(var: str, value: str) -> list[str]:
    """`VAR` from the environment, else `value`. The default is quoted in a plain assignment: inside
    "${VAR:-...}" bash would keep single quotes literally."""
    return [f"DEFAULT_{var}={quote(value)}", f'{var}="${{{var}:-$DEFAULT_{var}}}"']


def _model_dir_absolute(r: Recipe) -> list[str]:
    return _default("MODEL_DIR", r.model_dir) if r.model_dir.startswith("/") else []


def _model_dir_relative(r: Recipe, base: str) -> list[str]:
    """A relative checkpoint path (a bundle's own checkpoint/) is relative to the recipe folder `base`, so a
    copied or moved bundle serves its own checkpoint, not the one where it was built."""
    if r.model_dir.startswith("/"):
        return []
    return [f'DEFAULT_MODEL_DIR="$(realpath -m "{base}"/{quote(r.model_dir)})"',
            'MODEL_DIR="${MODEL_DIR:-$DEFAULT_MODEL_DIR}"']


# the trtkit root (the folder holding plugins/) of the python3 on PATH, for serve.sh's default TRTKIT_DIR
_FIND_TRTKIT = ("import os, plugins; "
                "print(os.path.dirname(os.path.dirname(os.path.abspath(plugins.__file__))))")


def _plugin_env(r: Recipe) -> list[str]:
    """PYTHONPATH and the expert storage for the trtkit::moe plugin (plugin backends only; TRTKIT_DIR set)."""
    if not r.lay.moe_backend.is_plugin:
        return []
    path = ":".join(trtllm.pythonpath('"$TRTKIT_DIR"'))
    return [f"export PYTHONPATH={path}\"${{PYTHONPATH:+:$PYTHONPATH}}\"",
            f"export {trtllm.STORAGE_ENV}=\"${{{trtllm.STORAGE_ENV}:-{trtllm.STORAGES[0]}}}\""]


def _plugin_args(r: Recipe) -> str:
    return f' --custom_module_dirs "$TRTKIT_DIR"/{quote(trtllm.MODULE_DIR)}' if r.lay.moe_backend.is_plugin else ""


def serve_sh(r: Recipe) -> str:
    """One instance on one node; REPLICA=i picks the i-th group of GPUs and port PORT+i."""
    tp, per_node = r.lay.tp, r.gpu.gpus_per_host
    lines = ["#!/usr/bin/env bash", *_summary(r), "set -euo pipefail"]
    if r.hosts > 1:
        lines += [f"echo {quote(f'this instance spans {r.hosts} nodes ({tp} GPUs): launch it with slurm.sbatch or lws.yaml')} >&2",
                  "exit 1", ""]
        return "\n".join(lines)
    replicas_per_node = per_node // tp
    lines += [
        *_model_dir_absolute(r),
        f"REPLICA=\"${{REPLICA:-0}}\"  # 0..{replicas_per_node - 1}: {replicas_per_node} instance(s) of {tp} "
        f"GPU(s) fit one {per_node}-GPU node",
        f"PORT=\"${{PORT:-{PORT}}}\"",
        'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        *_model_dir_relative(r, "$HERE"),
        f"if [ \"$REPLICA\" -ge {replicas_per_node} ]; then echo \"REPLICA must be < {replicas_per_node}\" >&2; "
        "exit 1; fi",
        f"FIRST=$((REPLICA * {tp}))",
        f"export CUDA_VISIBLE_DEVICES=\"$(seq -s, \"$FIRST\" $((FIRST + {tp - 1})))\"",
        *([f"TRTKIT_DIR=\"${{TRTKIT_DIR:-$(python3 -c {quote(_FIND_TRTKIT)})}}\"  # trtkit::moe plugin"]
          if r.lay.moe_backend.is_plugin else []),
        *_plugin_env(r),
        f"exec trtllm-serve \"$MODEL_DIR\" --config \"$HERE\"/{quote(OPTIONS_FILE)} --host 0.0.0.0 "
        f"--port \"$((PORT + REPLICA))\" --served_model_name {quote(r.served_name)}{_plugin_args(r)}",
        "",
    ]
    return "\n".join(lines)


_NEED_TRTKIT = "set TRTKIT_DIR to a trtkit checkout on shared storage (the folder holding plugins/)"


def _job_name(r: Recipe) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", r.name)


def slurm_sbatch(r: Recipe) -> str:
    """One job = one instance; `--array` runs the replicas."""
    tp, nodes, per_node = r.lay.tp, r.hosts, r.gpus_per_node
    c = r.cand
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={_job_name(r)}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={per_node}",
        f"#SBATCH --gpus-per-node={per_node}",
        f"#SBATCH --array=0-{c.replicas - 1}",
    ]
    if per_node == r.gpu.gpus_per_host:
        lines.append("#SBATCH --exclusive")
    lines += [
        *_summary(r),
        f"# {tp} MPI ranks = {nodes} node(s) x {per_node} GPU(s); array task i = replica i of {c.replicas}",
        "set -euo pipefail",
        *_model_dir_absolute(r),
        *_default("CONTAINER_IMAGE", TRTLLM_IMAGE),
        'RECIPE_DIR="${RECIPE_DIR:-$SLURM_SUBMIT_DIR}"',
        *_model_dir_relative(r, "$RECIPE_DIR"),
        f"PORT=\"${{PORT:-{PORT}}}\"",
    ]
    mounts = "$MODEL_DIR:$MODEL_DIR,$RECIPE_DIR:$RECIPE_DIR"
    if r.lay.moe_backend.is_plugin:  # the container gets trtkit from shared storage (srun passes the env on)
        lines += [f"TRTKIT_DIR=\"${{TRTKIT_DIR:?{_NEED_TRTKIT}}}\"", *_plugin_env(r)]
        mounts += ",$TRTKIT_DIR:$TRTKIT_DIR"
    lines += [
        f"srun --mpi=pmix --ntasks={tp} --ntasks-per-node={per_node} \\",
        f'  --container-image="$CONTAINER_IMAGE" --container-mounts="{mounts}" \\',
        f"  trtllm-llmapi-launch trtllm-serve \"$MODEL_DIR\" --config \"$RECIPE_DIR\"/{quote(OPTIONS_FILE)} \\",
        f"  --host 0.0.0.0 --port \"$PORT\" --served_model_name {quote(r.served_name)}{_plugin_args(r)}",
        "",
    ]
    return "\n".join(lines)
