"""Write the recipe folders of a search: one folder per profile, every file validated after writing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from builder.errors import OutputError
from builder.parallel import SerialComm
from builder.writer import atomic_output, is_disk_full
from recipes.k8s import dynamo_yaml, lws_yaml
from recipes.launch import serve_sh, slurm_sbatch
from recipes.plot import plot_frontier
from recipes.recipe import OPTIONS_FILE, Recipe, options_yaml, recipe_yaml
from recipes.search import Profile, SearchResult
from recipes.validate import validate_folder

RENDERERS: dict[str, Callable[[Recipe], str]] = {
    OPTIONS_FILE: options_yaml,
    "serve.sh": serve_sh,
    "slurm.sbatch": slurm_sbatch,
    "lws.yaml": lws_yaml,
    "dynamo.yaml": dynamo_yaml,
    "recipe.yaml": recipe_yaml,
}
EXECUTABLE = ("serve.sh", "slurm.sbatch")


def recipes_of(result: SearchResult) -> dict[Profile, Recipe]:
    req = result.request
    return {p: Recipe(profile=p, model=req.model, gpu=req.gpu, work=req.work, sla=req.sla, cand=c)
            for p, c in result.picks.items()}


def render(r: Recipe) -> dict[str, str]:
    return {name: fn(r) for name, fn in RENDERERS.items()}


def write_recipe(r: Recipe, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in render(r).items():
        path = folder / name
        path.write_text(text)
        if name in EXECUTABLE:
            os.chmod(path, 0o755)
    validate_folder(folder)
    return folder


def write_picks(result: SearchResult, out: Path) -> dict[Profile, Path]:
    """`out/<profile>/` for the latency, balanced and throughput picks."""
    return {p: write_recipe(r, out / p.value) for p, r in recipes_of(result).items()}


FRONTIER_PNG = "frontier.png"


def write_plan(result: SearchResult, out: Path, force: bool) -> tuple[dict[Profile, Path], Path]:
    """`trtkit plan --out OUT`: frontier.png and the picks' recipes, all or nothing. Built in `.OUT.partial`
    beside OUT and renamed into place only when complete (builder.writer.atomic_output): a failure leaves
    no half-written OUT, and a non-empty OUT is replaced only with `force`."""
    out = Path(out)
    try:
        with atomic_output(out, force, SerialComm()) as tmp:
            folders = write_picks(result, tmp)
            plot_frontier(result, tmp / FRONTIER_PNG)
    except OSError as exc:
        raise OutputError(_unwritable(out, exc)) from exc
    return {p: out / f.relative_to(tmp) for p, f in folders.items()}, out / FRONTIER_PNG


def _unwritable(out: Path, exc: OSError) -> str:
    if is_disk_full(exc):
        return (f"{out}: out of disk space while writing the plan; nothing was written: free space or choose "
                "another --out")
    where = f": {exc.filename}" if exc.filename else ""
    return (f"{out}: cannot write the plan here ({exc.strerror or exc}{where}); nothing was written: choose a "
            "writable --out")
