"""`trtkit build`, `trtkit bundle check`, `trtkit launch`: thin click layers over `deploy`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click


def _gpus(value: str) -> tuple[str, ...]:
    from deploy.build import GPUS

    keys = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    unknown = [k for k in keys if k not in GPUS]
    if unknown or not keys:
        raise click.BadParameter(f"{value!r}: choose from {', '.join(GPUS)} (comma-separated)")
    return keys


@click.command("build")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--gpus", default="h100,h200,b200,gb200", show_default=True,
              help="GPU types to plan recipes for (comma-separated).")
@click.option("--isl", type=click.IntRange(min=1), default=1024, show_default=True, help="Input tokens.")
@click.option("--osl", type=click.IntRange(min=1), default=1024, show_default=True, help="Output tokens.")
@click.option("--smoke", is_flag=True, help="Load the bundle with TensorRT-LLM and generate (GPU nodes).")
@click.option("--include-source", is_flag=True, help="Copy the MXFP4 source into the bundle (Hopper).")
@click.option("--calib-input-ids", type=click.Path(path_type=Path), default=None)
@click.option("--calib-text", type=click.Path(path_type=Path), default=None)
@click.option("--force", is_flag=True, help="Replace a non-empty OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle manifest summary as JSON.")
def build(src: Path, out: Path, gpus: str, isl: int, osl: int, smoke: bool, include_source: bool,
          calib_input_ids: Path | None, calib_text: Path | None, force: bool, as_json: bool) -> None:
    """Convert (calibrated) -> verify -> plan -> recipes -> bundle OUT. Fails if verification fails."""
    from deploy.build import BuildOptions
    from deploy.build import build as run_build

    opts = BuildOptions(gpus=_gpus(gpus), isl=isl, osl=osl, smoke=smoke, include_source=include_source,
                        force=force, calib_input_ids=calib_input_ids, calib_text=calib_text)
    manifest = run_build(src, out, opts, log=lambda m: click.echo(m, err=True))
    cast = manifest["cast"]
    summary = {"out": str(out), "files": len(manifest["files"]), "verification": "passed",
               "exact_blocks": cast["exact"] if cast else None,
               "fallback_blocks": cast["fallback"] if cast else None,
               "recipes": [r["path"].removeprefix("recipes/") for r in manifest["recipes"]]}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"bundle {out}: {summary['files']} files, verification passed, "
               f"{len(summary['recipes'])} recipes; see {out / 'README.md'}")
    if cast:
        click.echo(f"MXFP4 blocks: {cast['exact']} exact, {cast['fallback']} fallback")


@click.group("bundle")
def bundle() -> None:
    """Inspect engine bundles."""


@bundle.command("check")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help='Print {"bundle", "ok", "files", "problems"} on stdout (exit 1 unless ok).')
def bundle_check(folder: Path, as_json: bool) -> None:
    """Re-verify a bundle: its manifest, its verification result and every file's sha256 (exit 1 on any
    problem)."""
    from deploy.bundle import BundleError, check_bundle, read_manifest

    try:
        files = len(read_manifest(folder)["files"])
        problems = check_bundle(folder)
    except BundleError as exc:
        if not as_json:
            raise
        files, problems = None, [str(exc)]
    if as_json:
        click.echo(json.dumps({"bundle": str(folder), "ok": not problems, "files": files, "problems": problems}))
    else:
        for p in problems:
            click.echo(f"{folder}: {p}", err=True)
    if problems:
        sys.exit(1)
    if not as_json:
        click.echo(f"{folder}: verification passed, {files} files; every file matches manifest.json")


@click.command("launch")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--profile", type=click.Choice(["latency", "balanced", "throughput"]), default=None,
              help="Preferred profile (default: balanced, then throughput, then latency).")
@click.option("--dry-run", is_flag=True, help="Print the decision, the checks and the command; exit 0.")
@click.option("--inventory", type=click.Path(path_type=Path), default=None,
              help="YAML description of the node instead of NVML (dry runs, tests).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--model-dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint folder to serve (default: from the bundle or the recipe).")
@click.option("--ready-timeout", type=float, default=1800.0, show_default=True,
              help="Seconds to wait for the server's /health.")
@click.option("--checkpoint", type=click.Choice(["nvfp4", "mxfp4"]), default=None,
              help="Prefer recipes serving this checkpoint (nvfp4: the bundle's own, on Hopper through the "
                   "trtkit::moe plugin). Default: a recipe whose checkpoint is on this machine.")
@click.option("--verify-weights", is_flag=True,
              help="Also hash the bundle's weight shards against manifest.json. By default launch hashes every "
                   "other file and compares the shards' sizes only: hashing tens of GB takes minutes.")
def launch(target: Path, profile: str | None, dry_run: bool, inventory: Path | None, port: int,
           model_dir: Path | None, ready_timeout: float, checkpoint: str | None, verify_weights: bool) -> None:
    """Check the bundle against its manifest and this node, pick (bundle) or validate (recipe) a recipe,
    and start trtllm-serve."""
    from deploy.launch import LaunchRequest
    from deploy.launch import launch as run_launch

    req = LaunchRequest(target, profile, dry_run, inventory, port, model_dir, ready_timeout, checkpoint,
                        verify_weights)
    sys.exit(run_launch(req, os.environ, log=lambda m: click.echo(m, err=False)))
