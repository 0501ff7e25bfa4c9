"""`trtkit launch`: check the node, pick (bundle) or validate (recipe) a recipe, start TensorRT-LLM.

Under Slurm every rank runs this; rank 0 reads the node and decides, and broadcasts the decision so
all ranks start the same command (`trtllm-llmapi-launch trtllm-serve ...`, ranks = world size).
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from builder.errors import TrtkitError
from builder.numbers import finite
from builder.parallel import comm_from_env
from deploy.bundle import BUNDLE_MANIFEST, require_intact
from deploy.command import (
    Launch,
    build_command,
    check_model_dir,
    check_model_matches,
    model_dir_for,
    model_mismatch,
)
from deploy.node import read_node
from deploy.select import choose, find_recipes, warnings
from deploy.supervise import supervise
from recipes.recipe import TRTLLM_IMAGE

DEFAULT_PORT = 8000
DEFAULT_READY_TIMEOUT_S = 1800.0  # loading + autotuning + CUDA graph capture of a 120B model
_TRTLLM = (f"TensorRT-LLM is not installed here: pip install 'trtkit[gpu]' on the GPU node, or run inside "
           f"{TRTLLM_IMAGE}")
# the programs a launch command may start, and how to get each
INSTALL_HINTS = {
    "trtllm-serve": _TRTLLM,
    "trtllm-llmapi-launch": _TRTLLM,
    "mpirun": f"no MPI here: install Open MPI, or run inside {TRTLLM_IMAGE}",
}


class LaunchUsageError(TrtkitError):
    """A launch option that cannot work as given."""

    exit_code = 2


@dataclass(frozen=True)
class LaunchRequest:
    target: Path
    profile: str | None = None
    dry_run: bool = False
    inventory: Path | None = None
    port: int = DEFAULT_PORT
    model_dir: Path | None = None
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    checkpoint: str | None = None  # prefer recipes serving this checkpoint (nvfp4 | mxfp4)
    verify_weights: bool = False  # hash the weight shards too (default: sizes only; hashing takes minutes)

    def __post_init__(self) -> None:
        if not (finite(self.ready_timeout_s) and self.ready_timeout_s > 0):
            raise LaunchUsageError(f"--ready-timeout {self.ready_timeout_s}: must be a finite number of seconds "
                                   f"> 0 (default {DEFAULT_READY_TIMEOUT_S:.0f})")


@dataclass(frozen=True)
class Decision:
    launch: Launch
    lines: tuple[str, ...]


def bundle_of(target: Path) -> Path | None:
    """The bundle `target` is (a folder with recipes/), or lies in (its recipes/<gpu>/<profile>/ folder or
    that folder's recipe.yaml); None for a recipe of its own (trtkit plan's output, the catalog)."""
    folder = target.parent if target.is_file() else target
    if (folder / "recipes").is_dir() and not (folder / "recipe.yaml").is_file():
        return folder
    up = folder.absolute().parent.parent
    if up.name == "recipes" and ((up.parent / BUNDLE_MANIFEST).is_file() or (up.parent / "checkpoint").is_dir()):
        return up.parent
    return None


def decide(req: LaunchRequest, world_size: int | None, env: Mapping[str, str]) -> Decision:
    if req.model_dir is not None:  # an explicit folder is checked in dry runs too
        check_model_dir(req.model_dir, given=True)
    target = Path(req.target)
    bundle = bundle_of(target)
    if bundle is not None:  # before anything is chosen from it
        require_intact(bundle, req.verify_weights)
    recipes = find_recipes(target)
    node = read_node(req.inventory)

    def present(r) -> bool:  # the recipe's checkpoint is on this machine, and is the model it was planned for
        folder = model_dir_for(r, bundle, req.model_dir)
        return (folder / "config.json").is_file() and model_mismatch(r, folder) is None

    recipe, why = choose(recipes, node, req.profile, world_size, req.checkpoint, present)
    model_dir = model_dir_for(recipe, bundle, req.model_dir)
    if (model_dir / "config.json").is_file():  # dry run and real launch alike: never serve another model
        check_model_matches(recipe, model_dir, given=req.model_dir is not None)
    launch = build_command(recipe, model_dir, req.port, world_size, env)
    lines = [*why, *(f"warning: {w}" for w in warnings(recipe, node)),
             f"mode: {launch.mode}" + (f" ({world_size} ranks)" if world_size else ""),
             f"model: {launch.model_dir}",
             *([f"env: {' '.join(f'{k}={shlex.quote(v)}' for k, v in launch.env)}"] if launch.env else []),
             f"command: {shlex.join(launch.argv)}"]
    return Decision(launch, tuple(lines))


def launch(req: LaunchRequest, env: Mapping[str, str], log: Callable[[str], None]) -> int:
    comm = comm_from_env(env)
    world_size = comm.size if comm.size > 1 else None
    decision: Decision | TrtkitError | None = None
    if comm.rank == 0:
        try:
            decision = decide(req, world_size, env)
        except TrtkitError as exc:
            decision = exc
    decision = comm.bcast(decision)
    if isinstance(decision, TrtkitError):
        raise decision
    if comm.rank == 0:
        for line in decision.lines:
            log(line)
    if req.dry_run:
        return 0
    check_model_dir(decision.launch.model_dir)
    check_programs(decision.launch.argv, env)
    health = decision.launch.health_url if comm.rank == 0 else None
    return supervise(decision.launch.argv, health, req.ready_timeout_s, log, env=dict(decision.launch.env))


def check_programs(argv: tuple[str, ...], env: Mapping[str, str]) -> None:
    """Every program the command starts (the wrapper and trtllm-serve) is on PATH, else one line on how to
    get it (rather than a FileNotFoundError from the child process)."""
    for name in (n for n in INSTALL_HINTS if n in argv):
        if shutil.which(name, path=env.get("PATH")) is None:
            raise TrtkitError(f"{name}: not found on PATH; {INSTALL_HINTS[name]} (--dry-run prints the command "
                              "without starting it)")
