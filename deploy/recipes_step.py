"""The plan-and-render step of `trtkit build`: for each GPU type, search one fleet (an 8-GPU node, or
a GB200 NVL72 rack) for the bundle's model and write the latency/balanced/throughput recipes. On Hopper
a second search restricted to the bundle's own NVFP4 checkpoint (served through the trtkit::moe plugin)
writes `<profile>-nvfp4` recipes beside them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from recipes.hardware import gpu
from recipes.memory import Workload
from recipes.model import ModelRef, resolve_model
from recipes.precision import ARCH_PRECISION, QUANTS, Checkpoint
from recipes.render import recipes_of, write_recipe
from recipes.search import PlanRequest, SearchResult, search

BUNDLE_CHECKPOINT = "../../../checkpoint"  # OUT/checkpoint, seen from OUT/recipes/<gpu>/<profile>/


def fleet_size(key: str) -> int:
    """One NVLink domain: 8 GPUs on HGX boards, 72 on a GB200 NVL72 rack."""
    return gpu(key).nvlink_domain


def _searches(gpus: tuple[str, ...]) -> list[tuple[str, Checkpoint | None]]:
    """(GPU, checkpoint restriction) per search: the best deployment of each GPU, plus the bundle's own
    NVFP4 checkpoint wherever the best one serves another (Hopper: the MXFP4 source)."""
    out: list[tuple[str, Checkpoint | None]] = []
    for key in gpus:
        out.append((key, None))
        quants = ARCH_PRECISION[gpu(key).arch].quants
        if QUANTS[quants[0]].checkpoint is not Checkpoint.NVFP4 and any(
                QUANTS[q].checkpoint is Checkpoint.NVFP4 for q in quants):
            out.append((key, Checkpoint.NVFP4))
    return out


def plan_bundle(model: ModelRef, gpus: tuple[str, ...], isl: int, osl: int
                ) -> list[tuple[str, Checkpoint | None, SearchResult]]:
    """Every search of a bundle: (GPU, checkpoint restriction, result). PlanError when the workload does
    not fit the model or a GPU has no deployment: `trtkit build` runs this before any work, on SRC's config."""
    return [(key, checkpoint, search(PlanRequest(model=model, gpu=gpu(key), work=Workload(isl, osl),
                                                 gpus=fleet_size(key), checkpoint=checkpoint)))
            for key, checkpoint in _searches(gpus)]


def render_bundle_recipes(ckpt: Path, src: Path, out: Path, *, gpus: tuple[str, ...], isl: int, osl: int,
                          source_checksum: str) -> list[dict]:
    """Write recipes/<gpu>/<profile>/ and return one summary row per recipe (for README/manifest).

    The model is named after the source folder; its checkpoint is the bundle's own, named relative to each
    recipe folder (BUNDLE_CHECKPOINT): serve.sh, slurm.sbatch and `trtkit launch` then serve the checkpoint
    of the bundle they are in, wherever it was copied, never the place it was built."""
    model = replace(resolve_model(str(ckpt)), name=Path(src).resolve().name, path=BUNDLE_CHECKPOINT)
    rows = []
    for key, checkpoint, result in plan_bundle(model, gpus, isl, osl):
        suffix = f"-{checkpoint.value}" if checkpoint else ""
        for profile, recipe in recipes_of(result).items():
            folder = write_recipe(recipe, out / key / f"{profile.value}{suffix}")
            c = recipe.cand
            rows.append({"gpu": key, "profile": profile.value, "path": str(folder.relative_to(out.parent)),
                         "layout": c.layout.label, "checkpoint": recipe.checkpoint.value,
                         "checkpoint_source": (str(Path(src).resolve()) if recipe.checkpoint.value == "mxfp4"
                                               else "checkpoint/"),
                         "source_checksum": source_checksum if recipe.checkpoint.value == "mxfp4" else None,
                         "tps_per_user": round(c.tps_per_user, 1), "tps_per_gpu": round(c.tps_per_gpu, 1),
                         "ttft_ms": round(c.ttft_ms, 1), "gpus": c.fleet_gpus})
    return rows
