"""Does a recipe fit this node? Every reason it does not, in words an operator can act on.

The rules are a table of checks, each returning a reason or None; selection keeps the recipes with no
reasons and prefers the requested profile, then the exact GPU model, then the profile order below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import TrtkitError
from deploy.node import Node
from recipes.hardware import gpus as gpu_catalog
from recipes.validate import check_options, check_recipe_doc, read_yaml

PROFILE_ORDER = ("balanced", "throughput", "latency")
MEMORY_SLACK = 0.97  # a node GPU may report slightly less than the catalog's usable figure
MIN_SHM_GB = 16.0    # TensorRT-LLM multi-GPU runs move tensors through /dev/shm
BUSY_FRACTION = 0.05  # more of a GPU's memory in use than this (the driver reserves ~1%) is another process
RECIPE_FILE = "recipe.yaml"


class NoFit(TrtkitError):
    """Nothing in the bundle (or the given recipe) can run on this node."""

    exit_code = 2


@dataclass(frozen=True)
class RecipeRef:
    folder: Path
    doc: dict[str, Any]
    options: dict[str, Any]

    @classmethod
    def load(cls, folder: Path) -> RecipeRef:
        """recipe.yaml and its options file, each read and checked by recipes.validate (RecipeError naming
        the file and field): every field launch reads below is then present and of the right kind."""
        folder = Path(folder)
        path = folder / RECIPE_FILE if folder.is_dir() else folder
        doc = check_recipe_doc(path, read_yaml(path))
        options = read_yaml(path.parent / doc["tensorrt_llm"]["options_file"])
        check_options(path.parent, options, doc)
        return cls(path.parent, doc, options)

    @property
    def profile(self) -> str:
        return self.doc["profile"]

    @property
    def gpu(self) -> dict[str, Any]:
        return self.doc["gpu"]

    @property
    def checkpoint(self) -> str:
        return self.doc["model"]["checkpoint"]

    @property
    def uses_plugin(self) -> bool:
        """The MoE runs on trtkit::moe (recipe.yaml names the plugin): the NVFP4 checkpoint on Hopper."""
        return bool(self.doc.get("plugin"))

    @property
    def label(self) -> str:
        return f"{self.gpu['key']}/{self.profile}" + (" (nvfp4 via trtkit::moe)" if self.uses_plugin else "")

    @property
    def uses_load_balancer(self) -> bool:
        return bool((self.options.get("moe_config") or {}).get("load_balancer"))


Check = Callable[[RecipeRef, Node, dict], "str | None"]


def _arch(r: RecipeRef, n: Node, ctx: dict) -> str | None:
    if n.gpu.arch != r.gpu["arch"]:
        return (f"wrong architecture: the recipe is for {r.gpu['name']} ({r.gpu['arch']}), this node has "
                f"{n.gpu.name} ({n.gpu.arch}, sm {n.gpu.compute_capability})")
    return None


def _fp4_on_hopper(r: RecipeRef, n: Node, ctx: dict) -> str | None:
    if r.doc["layout"]["quant_algo"] == "NVFP4" and n.gpu.arch == "hopper":
        return ("NVFP4 W4A4 on Hopper: needs Blackwell FP4 tensor cores; use a Hopper recipe (the MXFP4 "
                "source, or the NVFP4 checkpoint through trtkit::moe)")
    return None


def _mig(r: RecipeRef, n: Node, ctx: dict) -> str | None:
    on = [i for i, g in enumerate(n.gpus) if g.mig]
    if on:
        return f"MIG enabled on GPU(s) {on}: TensorRT-LLM needs whole GPUs; disable it (nvidia-smi -mig 0)"
    return None


def _count(r: RecipeRef, n: Node, ctx: dict) -> str | None:
    need = r.gpu["gpus_per_node"]
    if n.count < need:
        return f"too few GPUs: the recipe needs {need} per node, this node has {n.count}"
    return None


def _memory(r: RecipeRef, n: Node, ctx: dict) -> str | None:
    planned = ctx["catalog"][r.gpu["key"]].memory_bytes / 1e9
    have = min(g.memory_gb for g in n.gpus)
    if have < planned * MEMORY_SLACK:
        return (f"too little memory: {have:.0f} GB per GPU, the recipe was planned for {planned:.0f} GB "
                f"({r.gpu['name']})")
    return None


def _multinode(r: RecipeRef, n: Node, ctx: dict) -> str | None:
    nodes = r.gpu["nodes_per_instance"]
    if nodes <= 1:
        return None
    world, tp = ctx.get("world_size"), r.doc["layout"]["tensor_parallel_size"]
    if world is None:
        return (f"the recipe spans {nodes} nodes: launch it under Slurm (srun --mpi=pmix, {tp} ranks) or "
                "with its lws.yaml")
    if world != tp:
        return f"world size {world} != tensor_parallel_size {tp}: start exactly {tp} ranks"
    return None


def _multinode_env(r: RecipeRef, n: Node, ctx: dict) -> str | None:
    if r.gpu["nodes_per_instance"] <= 1:
        return None
    if n.env.imex_channels < 1:
        return ("no IMEX channel (/dev/nvidia-caps-imex-channels): multi-node NVLink on GB200 needs one in "
                "the container (Kubernetes: a ComputeDomain)")
    return None


def _gdrcopy(r: RecipeRef, n: Node, ctx: dict) -> str | None:
    if r.uses_load_balancer and not n.env.gdrcopy:
        return "the recipe uses online expert load balancing, which needs GDRCopy (/dev/gdrdrv): install it"
    return None


CHECKS: tuple[Check, ...] = (_arch, _fp4_on_hopper, _mig, _count, _memory, _multinode, _multinode_env,
                             _gdrcopy)


def reasons(r: RecipeRef, node: Node, world_size: int | None = None) -> list[str]:
    ctx = {"catalog": gpu_catalog(), "world_size": world_size}
    return [why for check in CHECKS if (why := check(r, node, ctx))]


def warnings(r: RecipeRef, node: Node) -> list[str]:
    out = []
    if node.gpu.key != r.gpu["key"]:
        out.append(f"the recipe was planned for {r.gpu['name']}; this node has {node.gpu.name} "
                   "(same architecture, enough memory): predicted figures will differ")
    used = node.gpus[:r.gpu["gpus_per_node"]]  # the server's: the first ones, unless CUDA_VISIBLE_DEVICES
    busy = [f"{i} ({g.memory_used_gb:.1f} of {g.memory_gb:.0f} GB)" for i, g in enumerate(used)
            if g.memory_used_gb > BUSY_FRACTION * g.memory_gb]
    if busy:
        out.append(f"memory already in use on GPU {', '.join(busy)}: the recipe was sized for free GPUs, so "
                   "the server gets a smaller KV cache or fails to load; stop the other processes (nvidia-smi "
                   "lists them) or point CUDA_VISIBLE_DEVICES at free GPUs")
    if node.count > 1 and node.env.shm_gb < MIN_SHM_GB:
        out.append(f"/dev/shm is {node.env.shm_gb:.1f} GB; multi-GPU runs want >= {MIN_SHM_GB:.0f} GB "
                   "(docker --shm-size, or an emptyDir medium Memory)")
    return out


def find_recipes(root: Path) -> list[RecipeRef]:
    """Every recipe under a bundle (recipes/<gpu>/<profile>/) or a recipe folder itself."""
    root = Path(root)
    if not root.exists():
        raise TrtkitError(f"{root}: no such file or folder; pass a bundle made by trtkit build or a recipe folder")
    if root.is_file():
        if root.name != RECIPE_FILE:
            raise TrtkitError(f"{root}: a file; pass a bundle folder or a recipe folder (the one holding "
                              f"{RECIPE_FILE})")
        root = root.parent  # the recipe.yaml itself: its folder
    if (root / RECIPE_FILE).is_file():
        return [RecipeRef.load(root)]
    found = sorted((root / "recipes").glob(f"*/*/{RECIPE_FILE}")) if (root / "recipes").is_dir() else []
    if not found:
        raise TrtkitError(f"{root}: no recipe.yaml here or under recipes/<gpu>/<profile>/; pass a bundle "
                          "made by trtkit build or a recipe folder")
    return [RecipeRef.load(p.parent) for p in found]


def choose(recipes: list[RecipeRef], node: Node, profile: str | None, world_size: int | None = None,
           checkpoint: str | None = None, present: Callable[[RecipeRef], bool] = lambda r: True
           ) -> tuple[RecipeRef, list[str]]:
    """(chosen recipe, explanation lines); NoFit listing every reason when nothing fits.

    Among the recipes that fit, in order: the requested checkpoint, one whose checkpoint is on this
    machine (`present`), the requested profile, the exact GPU model, TensorRT-LLM's own MoE before the
    trtkit::moe plugin (predicted faster on Hopper), then PROFILE_ORDER."""
    verdicts = [(r, reasons(r, node, world_size)) for r in recipes]
    fits = [r for r, why in verdicts if not why]
    if not fits:
        lines = [f"{r.label}: {'; '.join(why)}" for r, why in verdicts]
        raise NoFit(f"no recipe fits {node.describe()}: " + " | ".join(lines))

    def rank(r: RecipeRef) -> tuple:
        order = PROFILE_ORDER.index(r.profile) if r.profile in PROFILE_ORDER else len(PROFILE_ORDER)
        return (checkpoint is not None and r.checkpoint != checkpoint, not present(r), r.profile != profile,
                r.gpu["key"] != node.gpu.key, r.uses_plugin, order)

    best = min(fits, key=rank)
    why = [f"node: {node.describe()}",
           f"{len(fits)} of {len(recipes)} recipe(s) fit: {', '.join(r.label for r in fits)}"]
    rejected = [f"  {r.label}: {'; '.join(w)}" for r, w in verdicts if w]
    if rejected:
        why += ["rejected:", *rejected]
    if profile and best.profile != profile:
        why.append(f"requested profile {profile!r} does not fit; using {best.profile!r}")
    if checkpoint and best.checkpoint != checkpoint:
        why.append(f"no recipe for the {checkpoint} checkpoint fits; using {best.checkpoint}")
    if not present(best):
        why.append(f"warning: the {best.checkpoint} checkpoint of {best.label} is not on this machine")
    why.append(f"chosen: {best.label} ({best.folder})")
    return best, why
