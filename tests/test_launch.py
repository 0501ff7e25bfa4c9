"""`trtkit launch`: selection and refusal on a grid of nodes, exact dry-run commands (single and
multi-node under MPI), and supervision of a real child process standing in for the server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from deploy.build import BuildOptions, build
from deploy.bundle import check_bundle

DATA = Path(__file__).parent / "data"
INV = DATA / "inventories"


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trtkit.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def bundle(tiny_mxfp4, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("launch") / "engine"
    build(tiny_mxfp4, out, BuildOptions(), log=lambda m: None)
    return out


def dry(bundle: Path, inventory: str, *extra: str) -> subprocess.CompletedProcess:
    return cli("launch", str(bundle), "--dry-run", "--inventory", str(INV / f"{inventory}.yaml"), *extra)


def command_of(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("command: ")).removeprefix("command: ")


@pytest.mark.parametrize("inventory, chosen", [
    ("h100x8", "h100/balanced"),
    ("h200x8", "h200/balanced"),
    ("b200x8", "b200/balanced"),
    ("gb200x4", "gb200/throughput"),  # the balanced GB200 pick spans 2 trays
    ("h100x2", "h100/throughput"),    # balanced needs 8 GPUs
])
def test_selection(bundle, tiny_mxfp4, inventory, chosen):
    r = dry(bundle, inventory)
    assert r.returncode == 0, r.stderr
    assert f"chosen: {chosen} ({bundle / 'recipes' / chosen})" in r.stdout
    gpu, profile = chosen.split("/")
    doc = yaml.safe_load((bundle / "recipes" / chosen / "recipe.yaml").read_text())
    assert doc["model"]["checkpoint"] == ("mxfp4" if gpu.startswith("h") else doc["model"]["checkpoint"])
    # NVFP4 recipes serve the bundle's checkpoint; MXFP4 ones (always on Hopper) the recorded source
    model = bundle / "checkpoint" if doc["model"]["checkpoint"] == "nvfp4" else tiny_mxfp4.resolve()
    assert command_of(r.stdout) == (
        f"trtllm-serve {model} --config {bundle}/recipes/{gpu}/{profile}/llm_options.yaml "
        f"--host 0.0.0.0 --port 8000 --served_model_name tiny-mxfp4")


def test_requested_profile_and_port(bundle):
    r = dry(bundle, "b200x8", "--profile", "latency", "--port", "9100")
    assert "chosen: b200/latency" in r.stdout and "--port 9100" in command_of(r.stdout)
    r = dry(bundle, "gb200x4", "--profile", "balanced")
    assert "requested profile 'balanced' does not fit; using 'throughput'" in r.stdout


@pytest.mark.parametrize("inventory, reasons", [
    ("h100x8-mig", ["MIG enabled on GPU(s) [0]", "NVFP4 W4A4 on Hopper"]),
    ("a100-40gb", ["wrong architecture", "too little memory: 39 GB per GPU"]),
    ("h100-40gb", ["too little memory: 40 GB per GPU, the recipe was planned for 80 GB"]),
])
def test_refusals_list_every_reason(bundle, inventory, reasons):
    r = dry(bundle, inventory)
    assert r.returncode == 2, r.stdout
    err = r.stderr.strip()
    assert err.startswith("trtkit: error: no recipe fits") and len(err.splitlines()) == 1
    for reason in reasons:
        assert reason in err, reason
    assert err.count(" | ") == 17  # all 18 recipes (6 of them Hopper's -nvfp4), each with its reasons


def test_recipe_validation_against_node(bundle):
    """A single recipe is validated, not picked: a B200 recipe on an H100 node is refused."""
    r = cli("launch", str(bundle / "recipes" / "b200" / "balanced"), "--dry-run", "--inventory",
            str(INV / "h100x8.yaml"))
    assert r.returncode == 2
    assert "wrong architecture" in r.stderr and "NVFP4 W4A4 on Hopper" in r.stderr


def test_nvml_absent_without_inventory(bundle):
    r = cli("launch", str(bundle), "--dry-run")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("trtkit: error: cannot read the GPUs through NVML")
    assert "--inventory FILE" in r.stderr


def multinode_recipe(bundle: Path, tmp_path: Path, tp: int) -> Path:
    """The GB200 balanced recipe cut to `tp` ranks over 2 trays (1 GPU each), for an MPI dry run."""
    folder = tmp_path / "multi"
    shutil.copytree(bundle / "recipes" / "gb200" / "balanced", folder)
    doc = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert doc["gpu"]["nodes_per_instance"] == 2  # the real pick spans two 4-GPU trays
    doc["layout"]["tensor_parallel_size"] = tp
    doc["gpu"].update(per_instance=tp, gpus_per_node=tp // 2)
    doc["model"]["checkpoint_path"] = str(bundle / "checkpoint")
    (folder / "recipe.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def test_multinode_dry_run_under_mpi(bundle, tmp_path):
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    folder = multinode_recipe(bundle, tmp_path, tp=2)
    args = [mpiexec, "-n", "2", sys.executable, "-m", "trtkit.cli", "launch", str(folder), "--dry-run",
            "--inventory", str(INV / "gb200x4.yaml")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stdout.count("command: ") == 1  # rank 0 decides and reports; rank 1 follows
    assert "mode: slurm (2 ranks)" in r.stdout
    assert command_of(r.stdout) == (
        f"trtllm-llmapi-launch trtllm-serve {bundle}/checkpoint --config {folder}/llm_options.yaml "
        f"--host 0.0.0.0 --port 8000 --served_model_name tiny-mxfp4")
    no_imex = subprocess.run([*args[:-1], str(INV / "gb200x4-no-imex.yaml")], capture_output=True, text=True,
                             timeout=300)
    assert no_imex.returncode == 2 and "no IMEX channel" in no_imex.stderr
    single = cli("launch", str(folder), "--dry-run", "--inventory", str(INV / "gb200x4.yaml"))
    assert single.returncode == 2 and "the recipe spans 2 nodes: launch it under Slurm" in single.stderr


def test_world_size_must_match(bundle, tmp_path):
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    folder = multinode_recipe(bundle, tmp_path, tp=4)
    r = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "trtkit.cli", "launch", str(folder),
                        "--dry-run", "--inventory", str(INV / "gb200x4.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "world size 2 != tensor_parallel_size 4" in r.stderr


# ---- supervision with a real stand-in server ---------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_env(tmp_path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "trtllm-serve"
    exe.write_text(f"#!{sys.executable}\n" + (DATA / "fake_trtllm_serve.py").read_text())
    exe.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["FAKE_ARGV_FILE"] = str(tmp_path / "argv.json")
    return env


def start(bundle: Path, env: dict, port: int, timeout: float = 30) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trtkit.cli", "launch", str(bundle), "--inventory",
                             str(INV / "b200x8.yaml"), "--port", str(port), "--ready-timeout", str(timeout)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, needle: str, limit: float = 120) -> str:
    seen, deadline = "", time.time() + limit
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if needle in line or (not line and proc.poll() is not None):
            return seen
    raise AssertionError(f"{needle!r} not seen in: {seen}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ready_then_signal_is_forwarded(bundle, fake_env, sig):
    port = free_port()
    proc = start(bundle, fake_env, port)
    out = wait_for(proc, "server ready")
    assert f"server ready: http://127.0.0.1:{port}/health" in out
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=60)
    assert f"fake server: got signal {int(sig)}" in rest
    assert proc.returncode == 0  # the server's own exit code


def test_never_ready_times_out(bundle, fake_env):
    fake_env["FAKE_MODE"] = "never"
    proc = start(bundle, fake_env, free_port(), timeout=2)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3
    assert "error: the server was not ready after 2 s" in out


def test_crash_before_ready(bundle, fake_env):
    fake_env["FAKE_MODE"] = "crash"
    proc = start(bundle, fake_env, free_port())
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 7
    assert "fake server: crashing" in out and "error: the server exited with code 7 before it was ready" in out


def test_shell_metacharacters_stay_plain_arguments(bundle, fake_env, tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(bundle / "recipes" / "b200" / "balanced", folder)
    doc = yaml.safe_load((folder / "recipe.yaml").read_text())
    pwned = tmp_path / "pwned"
    doc["model"]["served_name"] = f"x; touch {pwned} $(touch {pwned}) `touch {pwned}` | cat"
    (folder / "recipe.yaml").write_text(yaml.safe_dump(doc))
    fake_env["FAKE_MODE"] = "crash"  # record argv, then exit
    r = cli("launch", str(folder), "--inventory", str(INV / "b200x8.yaml"), "--model-dir",
            str(bundle / "checkpoint"), "--port", str(free_port()), env=fake_env)
    assert r.returncode == 7
    argv = json.loads(Path(fake_env["FAKE_ARGV_FILE"]).read_text())
    assert argv[argv.index("--served_model_name") + 1] == doc["model"]["served_name"]
    assert not pwned.exists()


def test_hopper_bundle_also_serves_its_own_nvfp4_checkpoint(bundle):
    """Hopper recipes of the bundle's NVFP4 checkpoint run the MoE on trtkit::moe: chosen on request,
    with this trtkit's module dir and PYTHONPATH."""
    r = dry(bundle, "h100x8", "--checkpoint", "nvfp4")
    assert r.returncode == 0, r.stderr
    chosen = bundle / "recipes" / "h100" / "balanced-nvfp4"
    assert f"chosen: h100/balanced (nvfp4 via trtkit::moe) ({chosen})" in r.stdout
    root = Path(__file__).resolve().parents[1]
    assert command_of(r.stdout) == (
        f"trtllm-serve {bundle / 'checkpoint'} --config {chosen}/llm_options.yaml --host 0.0.0.0 --port 8000 "
        f"--served_model_name tiny-mxfp4 --custom_module_dirs {root}/plugins/trtllm/trtllm_gptoss")
    assert f"env: PYTHONPATH={root}:{root}/plugins/trtllm" in r.stdout
    doc = yaml.safe_load((chosen / "recipe.yaml").read_text())
    assert doc["layout"]["moe_backend"] == "TRTKIT" and doc["layout"]["quant_algo"] == "W4A16_NVFP4"
    assert doc["model"]["checkpoint"] == "nvfp4" and doc["gpu"]["per_instance"] == 1
    # without a preference the MXFP4 source, predicted faster, still wins while it is present
    assert "chosen: h100/balanced (" in dry(bundle, "h100x8").stdout


def test_missing_source_falls_back_to_the_bundle_checkpoint(tiny_mxfp4, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_mxfp4, src)
    out = tmp_path / "engine"
    build(src, out, BuildOptions(gpus=("h100",)), log=lambda m: None)
    shutil.rmtree(src)
    r = dry(out, "h100x8")
    assert r.returncode == 0, r.stderr
    assert "chosen: h100/balanced (nvfp4 via trtkit::moe)" in r.stdout
    assert f"model: {out / 'checkpoint'}" in r.stdout


def test_plugin_server_gets_trtkit_on_its_path(bundle, fake_env, tmp_path):
    fake_env["FAKE_MODE"] = "crash"  # record, then exit
    fake_env["FAKE_ENV_FILE"] = str(tmp_path / "env.json")
    fake_env["PYTHONPATH"] = "/elsewhere"
    fake_env.pop("TRTKIT_MOE_STORAGE", None)
    r = cli("launch", str(bundle), "--inventory", str(INV / "h100x8.yaml"), "--checkpoint", "nvfp4",
            "--port", str(free_port()), env={**fake_env, "PWD": "/"})
    assert r.returncode == 7, r.stdout + r.stderr
    seen = json.loads(Path(fake_env["FAKE_ENV_FILE"]).read_text())
    root = Path(__file__).resolve().parents[1]
    assert seen["PYTHONPATH"] == f"{root}:{root}/plugins/trtllm:/elsewhere"
    assert seen["TRTKIT_MOE_STORAGE"] == "auto"  # frag on Hopper with Gluon (the fastest on H100), else spread
    assert seen["finds"] == {"trtllm_gptoss": True, "plugins.moe_layer": True}


# ---- the bundle is checked against its manifest before anything is chosen from it ---------------------

def copied(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    return copy


def refused(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


@pytest.mark.parametrize("edit, needle", [
    ("checkpoint/config.json", "checkpoint/config.json: sha256 differs from the manifest"),
    ("recipes/b200/balanced/serve.sh", "recipes/b200/balanced/serve.sh: sha256 differs from the manifest"),
    ("recipes/b200/extra/recipe.yaml", "recipes/b200/extra/dynamo.yaml: not listed in the manifest; "),
])
def test_launch_refuses_a_tampered_bundle(bundle, tmp_path, edit, needle):
    copy = copied(bundle, tmp_path)
    path = copy / edit
    if path.exists():
        path.write_text(path.read_text() + "\n")
    else:  # a recipe slipped into the bundle after it was built
        shutil.copytree(copy / "recipes" / "b200" / "latency", path.parent)
    for target in (copy, copy / "recipes" / "b200" / "balanced"):
        r = dry(target, "b200x8")
        refused(r, "not launching a bundle that does not match its manifest", needle, "trtkit bundle check")


def test_launch_refuses_a_bundle_without_manifest_or_verification(bundle, tmp_path):
    copy = copied(bundle, tmp_path)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["verification"]["passed"] = False
    (copy / "manifest.json").write_text(json.dumps(doc))
    refused(dry(copy, "b200x8"), "verification.passed is false")
    (copy / "manifest.json").unlink()  # before: bundle or not, it served the ORIGINAL bundle's checkpoint
    refused(dry(copy, "b200x8"), f"{copy / 'manifest.json'}: not found")
    refused(dry(copy / "recipes" / "b200" / "balanced", "b200x8"), "manifest.json: not found")


def test_weights_are_checked_by_size_unless_asked_to_hash(bundle, tmp_path):
    copy = copied(bundle, tmp_path)
    shard = next((copy / "checkpoint").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # same size, other bytes: found only by hashing
    shard.write_bytes(bytes(data))
    assert dry(copy, "b200x8").returncode == 0
    refused(dry(copy, "b200x8", "--verify-weights"), f"checkpoint/{shard.name}: sha256 differs")
    shard.write_bytes(bytes(data[:-1]))
    refused(dry(copy, "b200x8"), f"checkpoint/{shard.name}: {len(data) - 1} bytes, the manifest says {len(data)}")


def test_a_grown_shard_and_an_old_manifests_shards_are_caught_without_verify_weights(bundle, tmp_path):
    """Sizes catch a shard that grew as well as one that shrank; a manifest written before sizes were
    recorded has no size to compare, so its shards are hashed even for a launch."""
    copy = copied(bundle, tmp_path)
    shard = next((copy / "checkpoint").glob("*.safetensors"))
    data = shard.read_bytes()
    shard.write_bytes(data + b"\0")
    assert check_bundle(copy, verify_weights=False) == [
        f"checkpoint/{shard.name}: {len(data) + 1} bytes, the manifest says {len(data)}"]
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes
    doc = json.loads((copy / "manifest.json").read_text())
    del doc["sizes"]
    (copy / "manifest.json").write_text(json.dumps(doc))
    assert check_bundle(copy, verify_weights=False) == [f"checkpoint/{shard.name}: sha256 differs from the manifest"]


def test_a_moved_bundle_serves_its_own_checkpoint(bundle, tmp_path):
    """A recipe folder of a bundle resolves the checkpoint from the bundle it lies in, not from the path
    recorded when the bundle was built."""
    copy = copied(bundle, tmp_path)
    for target in (copy / "recipes" / "b200" / "balanced", copy / "recipes" / "b200" / "balanced" / "recipe.yaml"):
        r = dry(target, "b200x8")
        assert r.returncode == 0, r.stderr
        assert f"model: {copy.absolute() / 'checkpoint'}" in r.stdout


def test_a_moved_bundles_scripts_serve_its_own_checkpoint(bundle, tmp_path):
    """serve.sh and slurm.sbatch name the bundle's checkpoint relative to their recipe folder."""
    copy = copied(bundle, tmp_path)
    recipe = copy / "recipes" / "b200" / "balanced"
    doc = yaml.safe_load((recipe / "recipe.yaml").read_text())
    assert doc["model"]["checkpoint"] == "nvfp4" and doc["model"]["checkpoint_path"] == "../../../checkpoint"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("trtllm-serve", "srun"):  # stand-ins that print their argv
        (bin_dir / name).write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "MODEL_DIR"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    serve = subprocess.run(["bash", str(recipe / "serve.sh")], capture_output=True, text=True, env=env, cwd=tmp_path,
                           check=True)
    assert json.loads(serve.stdout)[0] == str((copy / "checkpoint").resolve())
    slurm = subprocess.run(["bash", str(recipe / "slurm.sbatch")], capture_output=True, text=True, cwd=tmp_path,
                           env={**env, "SLURM_SUBMIT_DIR": str(recipe)}, check=True)
    argv = json.loads(slurm.stdout)
    ckpt = str((copy / "checkpoint").resolve())
    assert argv[argv.index("trtllm-serve") + 1] == ckpt and f"--container-mounts={ckpt}:{ckpt}," in " ".join(argv)


@pytest.mark.parametrize("used", [[0.6, 41.3, 0.5, 0.5, 0.5, 0.5, 0.5, 70.0], [41.3, 12.0]])
def test_memory_in_use_is_warned_about(bundle, tmp_path, used):
    """A GPU with another process's memory on it (a stale server, say): the launch still runs but names the
    GPUs the server will use (the first gpus_per_node) that hold more than 5% in use, and how much."""
    inv = tmp_path / "busy.yaml"
    gpu = {"name": "NVIDIA H100 80GB HBM3", "memory_gb": 85.0, "compute_capability": "9.0", "nvlink_links": 18}
    inv.write_text(yaml.safe_dump({"driver_version": "580.1", "cuda_version": "13.0",
                                   "gpus": [{**gpu, "memory_used_gb": u} for u in used]}))
    r = cli("launch", str(bundle), "--dry-run", "--inventory", str(inv))
    assert r.returncode == 0, r.stderr
    chosen = next(line for line in r.stdout.splitlines() if line.startswith("chosen: "))
    folder = Path(chosen.rsplit("(", 1)[1].rstrip(")"))
    n = yaml.safe_load((folder / "recipe.yaml").read_text())["gpu"]["gpus_per_node"]
    busy = [f"{i} ({u} of 85 GB)" for i, u in enumerate(used[:n]) if u > 0.05 * 85]
    warned = [line for line in r.stdout.splitlines() if "memory already in use" in line]
    assert warned == ([f"warning: memory already in use on GPU {', '.join(busy)}: the recipe was sized for free "
                       "GPUs, so the server gets a smaller KV cache or fails to load; stop the other processes "
                       "(nvidia-smi lists them) or point CUDA_VISIBLE_DEVICES at free GPUs"] if busy else []), r.stdout
    assert n < len(used) or busy  # one case names GPUs, and a GPU past the server's is never named
    assert "memory already in use" not in dry(bundle, "h100x2").stdout   # no figure: nothing said
