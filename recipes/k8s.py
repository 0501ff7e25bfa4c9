"""Kubernetes manifests of a recipe: a LeaderWorkerSet (plain Kubernetes, one leader + workers per
replica) and an aggregated Dynamo `DynamoGraphDeployment`, each preceded by the ConfigMap that carries
the TensorRT-LLM options. Commands are argument lists (no shell) except the LWS leader, whose one shell
line only expands the LWS environment; every literal in it is shlex-quoted. Recipes on the trtkit::moe
plugin (backend TRTKIT) also mount a trtkit checkout from the PersistentVolumeClaim `trtkit-source` at
/opt/trtkit and put it on PYTHONPATH (Dynamo's worker has no --custom_module_dirs: it imports the model
package first, then runs dynamo.trtllm as __main__).
"""

from __future__ import annotations

from shlex import quote
from typing import Any

import yaml

from plugins import trtllm
from recipes.recipe import (
    DYNAMO_IMAGE,
    DYNAMO_TRTLLM,
    DYNAMO_VERSION,
    OPTIONS_FILE,
    PORT,
    TRTLLM_IMAGE,
    Recipe,
    options_yaml,
)

CONFIG_DIR = "/config"
MODEL_PVC = "model-cache"
MODEL_MOUNT = "/models"
TRTKIT_PVC = "trtkit-source"
TRTKIT_MOUNT = "/opt/trtkit"
DYNAMO_NOTE = (f"# Dynamo {DYNAMO_VERSION} (its image bundles TensorRT-LLM {DYNAMO_TRTLLM}): needs the Dynamo platform "
               f"(operator) {DYNAMO_VERSION.split('.post')[0]}\n# and NVIDIA driver >= 580 (CUDA 13.0); the image "
               "runs as a non-root user, so the model PVC must be readable by it\n")


def config_map(r: Recipe) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": _cm_name(r), "labels": _labels(r)},
            "data": {OPTIONS_FILE: options_yaml(r)}}


def _cm_name(r: Recipe) -> str:
    return f"{r.name}-options"[:63].rstrip("-")


def _labels(r: Recipe) -> dict[str, str]:
    return {"app.kubernetes.io/name": r.name, "app.kubernetes.io/part-of": "trtkit",
            "trtkit/profile": r.profile.value}


def _volumes(r: Recipe) -> list[dict[str, Any]]:
    """options, models, then the plugin's trtkit checkout (plugin backends), then /dev/shm."""
    return [{"name": "options", "configMap": {"name": _cm_name(r)}},
            {"name": "models", "persistentVolumeClaim": {"claimName": MODEL_PVC}},
            *([{"name": "trtkit", "persistentVolumeClaim": {"claimName": TRTKIT_PVC, "readOnly": True}}]
              if r.lay.moe_backend.is_plugin else []),
            {"name": "dshm", "emptyDir": {"medium": "Memory"}}]


def _mounts(r: Recipe) -> list[dict[str, Any]]:
    return [{"name": "options", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "models", "mountPath": MODEL_MOUNT},
            *([{"name": "trtkit", "mountPath": TRTKIT_MOUNT, "readOnly": True}] if r.lay.moe_backend.is_plugin else []),
            {"name": "dshm", "mountPath": "/dev/shm"}]


def _plugin_env() -> list[dict[str, Any]]:
    path = ":".join(trtllm.pythonpath(TRTKIT_MOUNT))
    return [{"name": "PYTHONPATH", "value": path}, {"name": trtllm.STORAGE_ENV, "value": trtllm.STORAGES[0]}]


def _plugin_args(r: Recipe) -> list[str]:
    return ["--custom_module_dirs", f"{TRTKIT_MOUNT}/{trtllm.MODULE_DIR}"] if r.lay.moe_backend.is_plugin else []


def _k8s_model_dir(r: Recipe) -> str:
    return r.model_dir if r.model_dir.startswith(MODEL_MOUNT + "/") else f"{MODEL_MOUNT}/{r.model.name}"


def _serve_args(r: Recipe) -> list[str]:
    return ["trtllm-serve", _k8s_model_dir(r), "--config", f"{CONFIG_DIR}/{OPTIONS_FILE}", "--host", "0.0.0.0",
            "--port", str(PORT), "--served_model_name", r.served_name, *_plugin_args(r)]


def _container(r: Recipe, name: str, command: list[str], leader: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name, "image": TRTLLM_IMAGE, "command": command,
        "resources": {"limits": {"nvidia.com/gpu": r.gpus_per_node}},
        "volumeMounts": _mounts(r),
    }
    out.update(_env_entry(r))
    if leader:
        out["ports"] = [{"containerPort": PORT, "name": "http"}]
        out["readinessProbe"] = {"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": 10,
                                 "failureThreshold": 360}
    return out


def _pod(r: Recipe, container: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": _labels(r)},
            "spec": {"containers": [container], "volumes": _volumes(r),
                     "nodeSelector": {"nvidia.com/gpu.product": r.gpu.k8s_product}}}


def leader_command(r: Recipe) -> list[str]:
    if r.hosts == 1:
        return _serve_args(r)
    # ranks on every pod of the group: the leader, then workers <lws>-<group>-<i>.<lws> (LWS naming)
    serve = " ".join(quote(a) for a in _serve_args(r))
    script = (
        'hosts="$LWS_LEADER_ADDRESS:' + str(r.gpus_per_node) + '"; '
        'for i in $(seq 1 $((LWS_GROUP_SIZE - 1))); do '
        'hosts="$hosts,$LWS_NAME-$LWS_GROUP_INDEX-$i.$LWS_NAME:' + str(r.gpus_per_node) + '"; done; '
        f"exec mpirun --allow-run-as-root -np {r.lay.tp} --host \"$hosts\" trtllm-llmapi-launch {serve}")
    return ["/bin/bash", "-c", script]


def _lws_env() -> list[dict[str, Any]]:
    def label(key: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['leaderworkerset.sigs.k8s.io/{key}']"}}}

    return [{"name": "LWS_NAME", **label("name")}, {"name": "LWS_GROUP_INDEX", **label("group-index")}]


def leader_worker_set(r: Recipe) -> dict[str, Any]:
    """size = nodes per instance; a one-node instance is a single pod (workerTemplate serves)."""
    leader = _container(r, "trtllm-leader", leader_command(r), leader=True)
    template: dict[str, Any] = {"size": r.hosts, "restartPolicy": "RecreateGroupOnPodRestart"}
    if r.hosts > 1:
        leader["env"] = leader.get("env", []) + _lws_env()
        template["leaderTemplate"] = _pod(r, leader)
        template["workerTemplate"] = _pod(r, _container(r, "trtllm-worker", ["/usr/sbin/sshd", "-D"], False))
    else:
        template["workerTemplate"] = _pod(r, leader)
    return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": {"name": r.name, "labels": _labels(r)},
            "spec": {"replicas": r.cand.replicas, "startupPolicy": "LeaderCreated",
                     "leaderWorkerTemplate": template}}


def dynamo_graph(r: Recipe) -> dict[str, Any]:
    run = (["python3", "-c", f"import runpy, {trtllm.PACKAGE}; "
                              "runpy.run_module('dynamo.trtllm', run_name='__main__', alter_sys=True)"]
           if r.lay.moe_backend.is_plugin else ["python3", "-m", "dynamo.trtllm"])
    worker_args = [*run, "--model-path", _k8s_model_dir(r),
                   "--served-model-name", r.served_name, "--extra-engine-args", f"{CONFIG_DIR}/{OPTIONS_FILE}"]
    worker: dict[str, Any] = {
        "componentType": "worker", "replicas": r.cand.replicas,
        "resources": {"limits": {"gpu": str(r.gpus_per_node)}, "requests": {"gpu": str(r.gpus_per_node)}},
        "sharedMemory": {"size": "80Gi"},
        "extraPodSpec": {"mainContainer": {"image": DYNAMO_IMAGE, "command": worker_args,
                                           "volumeMounts": _mounts(r)[:-1], **_env_entry(r)},
                         "volumes": _volumes(r)[:-1]},
    }
    if r.hosts > 1:
        worker["multinode"] = {"nodeCount": r.hosts}
    frontend = {"componentType": "frontend", "replicas": 1,
                "extraPodSpec": {"mainContainer": {"image": DYNAMO_IMAGE, "command": [
                    "python3", "-m", "dynamo.frontend", "--router-mode", "round-robin", "--http-port", str(PORT)]}}}
    return {"apiVersion": "nvidia.com/v1alpha1", "kind": "DynamoGraphDeployment",
            "metadata": {"name": r.name, "labels": _labels(r)},
            "spec": {"backendFramework": "trtllm", "services": {"Frontend": frontend, "TRTLLMWorker": worker}}}


def _env_entry(r: Recipe) -> dict[str, Any]:
    return {"env": _plugin_env()} if r.lay.moe_backend.is_plugin else {}


def _docs(r: Recipe, main: dict[str, Any], what: str, note: str = "") -> str:
    head = (f"# {what}: {r.model.name}, {r.cand.replicas} replica(s) x {r.lay.tp} x {r.gpu.name} "
            f"({r.hosts} node(s) each), profile {r.profile.value}\n{note}")
    return head + yaml.safe_dump_all([config_map(r), main], sort_keys=False, width=120)


def lws_yaml(r: Recipe) -> str:
    return _docs(r, leader_worker_set(r), "LeaderWorkerSet")


def dynamo_yaml(r: Recipe) -> str:
    return _docs(r, dynamo_graph(r), "Dynamo DynamoGraphDeployment (aggregated)", DYNAMO_NOTE)

