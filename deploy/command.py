"""The exact command a recipe runs, as an argument list (never a shell string built from file values),
and the environment it adds (recipes on the trtkit::moe plugin: PYTHONPATH and the expert storage)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import plugins
from builder.checkpoint import expert_format_of
from builder.errors import TrtkitError
from builder.spec import ModelSpec
from deploy.bundle import read_manifest
from deploy.select import RecipeRef
from plugins import trtllm
from recipes.recipe import model_shape

TRTKIT_ROOT = Path(plugins.__file__).resolve().parent.parent  # the folder holding plugins/ (checkout or site-packages)

HOST = "0.0.0.0"


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    port: int
    mode: str  # "single", "single-mpirun" or "slurm"
    model_dir: Path
    env: tuple[tuple[str, str], ...] = ()  # set for the server on top of the launcher's environment

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"


def model_dir_for(r: RecipeRef, bundle: Path | None, override: Path | None) -> Path:
    """Where the recipe's checkpoint is: --model-dir, else the launched bundle's own NVFP4 checkpoint or
    its recorded MXFP4 source (Hopper), else the path the recipe names (relative: to the recipe folder).
    Never the bundle path recorded at build time: a copied or moved bundle serves its own checkpoint."""
    if override is not None:
        return Path(override)
    if bundle is not None:
        if r.checkpoint == "nvfp4":
            return bundle / "checkpoint"
        source = read_manifest(bundle)["source"]
        return bundle / source["copied_to"] if source["copied_to"] else Path(source["path"])
    return r.folder / r.doc["model"]["checkpoint_path"]  # an absolute path stays as it is


def plugin_env(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """This trtkit on PYTHONPATH (the server and any worker it starts import `plugins.*` and
    `trtllm_gptoss`), and the expert storage unless the operator chose one."""
    path = trtllm.pythonpath(str(TRTKIT_ROOT)) + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else [])
    return (("PYTHONPATH", os.pathsep.join(path)),
            (trtllm.STORAGE_ENV, environ.get(trtllm.STORAGE_ENV, trtllm.STORAGES[0])))


def build_command(r: RecipeRef, model_dir: Path, port: int, world_size: int | None,
                  environ: Mapping[str, str] = os.environ) -> Launch:
    serve = ["trtllm-serve", str(model_dir), "--config", str(r.folder / r.doc["tensorrt_llm"]["options_file"]),
             "--host", HOST, "--port", str(port), "--served_model_name", str(r.doc["model"]["served_name"])]
    env: tuple[tuple[str, str], ...] = ()
    if r.uses_plugin:
        serve += ["--custom_module_dirs", str(TRTKIT_ROOT / trtllm.MODULE_DIR)]
        env = plugin_env(environ)
    if world_size is not None and world_size > 1:
        return Launch(("trtllm-llmapi-launch", *serve), port, "slurm", model_dir, env)
    if (r.doc.get("launch") or {}).get("mpirun"):
        return Launch(("mpirun", "-n", "1", *serve), port, "single-mpirun", model_dir, env)
    return Launch(tuple(serve), port, "single", model_dir, env)


def check_model_dir(model_dir: Path, given: bool = False) -> None:
    """The checkpoint folder holds config.json; given: it came from --model-dir (checked in dry runs too)."""
    model_dir = Path(model_dir)
    what = ("no such folder" if not model_dir.exists() else "a file, not a checkpoint folder"
            if not model_dir.is_dir() else "no config.json: not a Hugging Face checkpoint folder")
    if (model_dir / "config.json").is_file():
        return
    if given:
        raise TrtkitError(f"--model-dir {model_dir}: {what}; pass the checkpoint folder (the one holding "
                          "config.json)")
    raise TrtkitError(f"{model_dir}: {what}: the checkpoint this recipe serves is not there; pass --model-dir "
                      "or copy the checkpoint")


def model_mismatch(r: RecipeRef, model_dir: Path, given: bool = False) -> str | None:
    """Why the checkpoint in `model_dir` is not the one recipe `r` was planned for (its expert format, or a
    config.json fact the recipe records under model.config), as one line; None when it is."""
    model_dir = Path(model_dir)
    where = f"--model-dir {model_dir}" if given else str(model_dir)
    recipe = f"recipe {r.folder / 'recipe.yaml'}"
    spec = ModelSpec.from_dir(model_dir)
    have, want = expert_format_of(spec.raw_config, model_dir).value, r.checkpoint
    if have != want:
        other = (f", or launch a recipe for the {have.upper()} one (--checkpoint {have})"
                 if have in ("nvfp4", "mxfp4") else "")
        return (f"{where}: holds the {have.upper()} checkpoint, but {recipe} serves the {want.upper()} one; pass "
                f"the {want.upper()} checkpoint folder{other}")
    shape, planned = model_shape(spec), r.doc["model"].get("config") or {}
    for key, value in planned.items():
        if key in shape and shape[key] != value:
            return (f"{where}: config.json has {key}={shape[key]!r}, but {recipe} was planned for {key}={value!r} "
                    f"(model {r.doc['model']['name']}); pass that model's checkpoint, or plan recipes for this one "
                    f"(trtkit plan --model {model_dir})")
    return None


def check_model_matches(r: RecipeRef, model_dir: Path, given: bool = False) -> None:
    why = model_mismatch(r, model_dir, given)
    if why is not None:
        raise TrtkitError(why)
