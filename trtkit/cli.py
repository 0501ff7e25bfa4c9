"""The `trtkit` console script: a thin click layer. Library errors become one line and exit code."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import click

from builder.errors import TrtkitError
from builder.layout import ExpertFormat
from builder.parallel import comm_from_env
from builder.quant_config import SCOPES
from builder.synth import SHAPES
from trtkit.cli_deploy import build, bundle, launch
from trtkit.cli_plan import plan
from trtkit.cli_plugins import plugins as plugins_cli
from trtkit.cli_runtime import FiniteFloat, forward, verify

SHARD_GB = FiniteFloat(min=0, min_open=True, max=1e6)  # > 0; at most 1 PB, so GB * 1e9 stays an int


def fail(message: str, code: int = 1) -> None:
    click.echo(f"trtkit: error: {message}", err=True)
    sys.exit(code)


@contextmanager
def bar(total: int, desc: str, enabled: bool, unit: str = "B"):
    """A progress bar (rate and ETA) on stderr, in bytes by default; yields the `advance(n)` callback."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024,
              file=sys.stderr, dynamic_ncols=True) as t:
        yield t.update


class TrtkitGroup(click.Group):
    """Turns domain errors into `trtkit: error: ...` + non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
        previous = _exit_on_sigterm()
        try:
            return super().invoke(ctx)
        except TrtkitError as exc:
            fail(str(exc), exc.exit_code)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signal.SIGTERM)  # SystemExit unwinds like Ctrl-C: atomic_output removes .OUT.partial


def _exit_on_sigterm():
    """SIGTERM (kill, a batch scheduler, mpirun) exits via SystemExit so every `finally`/`except
    BaseException` cleanup runs, as for Ctrl-C; the default action would leave .OUT.partial behind.
    Returns the previous handler (None when not on the main thread, where no handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


# synth --layers: far above any gpt-oss (24 and 36 layers); 10**8 took minutes and 14 GB of RAM just
# listing the tensors, before the disk-space check could refuse it
MAX_SYNTH_LAYERS = 1024


@click.group(cls=TrtkitGroup)
@click.version_option(package_name="trtkit")
def main() -> None:
    """trtkit: gpt-oss checkpoints to verified NVFP4 TensorRT-LLM bundles."""


def _progress_enabled(quiet: bool, rank: int) -> bool:
    return not quiet and rank == 0


@main.command()
@click.option("--shape", type=click.Choice(sorted(SHAPES)), default="tiny", show_default=True,
              help="Named size: tiny (embedded default) or the released gpt-oss shapes.")
@click.option("--layers", type=click.IntRange(min=1, max=MAX_SYNTH_LAYERS), default=None,
              help=f"Cut (or stretch) the model to N layers, 1 to {MAX_SYNTH_LAYERS} (gpt-oss has 24 or 36).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of every tensor's generators (0 to 2**63 - 1).")
@click.option("--experts", "experts_format", type=click.Choice(["mxfp4", "bf16"]), default="mxfp4",
              show_default=True, help="mxfp4: the released layout; bf16: as transformers saves it.")
@click.option("--max-shard-gb", type=SHARD_GB, default=5.0, show_default=True,
              help="Largest shard in GB (a tensor bigger than this gets a shard of its own).")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.argument("out", type=click.Path(path_type=Path))
def synth(shape: str, layers: int | None, seed: int, experts_format: str, max_shard_gb: float,
          force: bool, quiet: bool, out: Path) -> None:
    """Write a deterministic synthetic gpt-oss checkpoint (Hugging Face release layout) to OUT."""
    from builder.layout import checkpoint_tensors
    from builder.synth import synth as run_synth

    comm = comm_from_env(os.environ)
    fmt = ExpertFormat(experts_format)
    total = sum(t.nbytes for t in checkpoint_tensors(SHAPES[shape].spec(layers), fmt))
    with bar(total, f"synth {shape}", _progress_enabled(quiet, comm.rank)) as advance:
        spec = run_synth(out, shape, layers=layers, seed=seed, experts_format=fmt, force=force,
                         max_shard_bytes=int(max_shard_gb * 1e9), comm=comm, progress=advance)
    if comm.rank == 0:
        click.echo(f"wrote {out}: gpt-oss {shape}, {spec.num_hidden_layers} layers, "
                   f"{spec.num_local_experts} experts ({fmt.value}), {total / 1e9:.3f} GB")


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--scope", type=click.Choice(sorted(SCOPES)), default="experts", show_default=True,
              help="Modules to quantize (identical tensors for gpt-oss; recorded in the manifest).")
@click.option("--max-shard-gb", type=SHARD_GB, default=5.0, show_default=True,
              help="Largest shard in GB (a tensor bigger than this gets a shard of its own).")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--calibrate", is_flag=True,
              help="Collect activation amax and write input_scale (a complete W4A4 NVFP4 checkpoint).")
@click.option("--calib-input-ids", type=click.Path(path_type=Path), default=None,
              help="Calibration token ids: JSON list of lists (one forward per list).")
@click.option("--calib-text", type=click.Path(path_type=Path), default=None,
              help="Calibration text, tokenized with SRC's tokenizer.json (default: built-in text).")
@click.option("--calib-dtype", type=click.Choice(["bfloat16", "float32"]), default="bfloat16",
              show_default=True, help="Dtype of the calibration forward.")
def convert(src: Path, out: Path, scope: str, max_shard_gb: float, force: bool, quiet: bool,
            as_json: bool, calibrate: bool, calib_input_ids: Path | None, calib_text: Path | None,
            calib_dtype: str) -> None:
    """Convert gpt-oss checkpoint SRC (MXFP4 release or BF16) to an NVFP4 checkpoint in OUT."""
    from builder.checkpoint import Checkpoint
    from builder.convert import convert as run_convert
    from builder.layout import checkpoint_tensors

    comm = comm_from_env(os.environ)
    ckpt = Checkpoint.open(src)
    if (calib_input_ids or calib_text) and not calibrate:
        fail("--calib-input-ids/--calib-text need --calibrate")
    scales, calibration = None, None
    if calibrate:
        scales, calibration = _calibrate(src, ckpt.spec.num_hidden_layers, calib_input_ids, calib_text,
                                         calib_dtype, quiet, comm.rank)
    total = sum(t.nbytes for t in checkpoint_tensors(ckpt.spec, ExpertFormat.NVFP4))
    with bar(total, "convert", _progress_enabled(quiet, comm.rank)) as advance:
        result = run_convert(src, out, scope=scope, force=force, comm=comm, input_scales=scales,
                             calibration=calibration, max_shard_bytes=int(max_shard_gb * 1e9),
                             progress=_scaled(advance, comm.size))
    if comm.rank:
        return
    _report_convert(result.manifest, out, as_json)


def _calibrate(src: Path, layers: int, ids: Path | None, text: Path | None, dtype: str, quiet: bool, rank: int
               ) -> tuple[dict[str, float], dict]:
    """Every rank calibrates (same data, same result): no rank waits on another."""
    import torch

    from builder.calibrate import calibration_data, collect_amax, input_scales

    data = calibration_data(src, input_ids=ids, text_file=text)
    with bar(layers, f"calibrate {data.num_tokens} tokens", _progress_enabled(quiet, rank), "layer") as advance:
        amax = collect_amax(src, data, dtype=getattr(torch, dtype), progress=advance)
    return input_scales(amax), {**data.describe(), "dtype": dtype, "amax": amax}


def _scaled(advance: Callable[[int], None] | None, size: int) -> Callable[[int], None] | None:
    """Rank 0 sees only its own shards; scale its progress so the bar still ends near 100%."""
    if advance is None:
        return None
    return lambda n: advance(n * size)


def _report_convert(manifest: dict, out: Path, as_json: bool) -> None:
    blocks = manifest["cast"]["mxfp4_blocks"]
    summary = {"out": str(out), "source_format": manifest["source"]["expert_format"],
               "exact_blocks": blocks["exact"] if blocks else None,
               "fallback_blocks": blocks["fallback"] if blocks else None,
               "zero_scale_blocks": blocks["zero_scale"] if blocks else None,
               "weights_only": manifest["quantization"]["weights_only"],
               "files": len(manifest["files"]), "source_checksum": manifest["source"]["checksum"]}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"wrote {out} (NVFP4, {summary['files']} files, manifest trtkit_manifest.json)")
    if blocks:
        total = blocks["exact"] + blocks["fallback"]
        click.echo(f"MXFP4 blocks: {blocks['exact']} exact, {blocks['fallback']} fallback (requantized; "
                   f"{blocks['zero_scale']} of them with scale byte 0) of {total}")
    else:
        click.echo("experts quantized from BF16 (NVFP4, Model Optimizer numerics)")
    if summary["weights_only"]:
        click.echo("note: weights-only (no activation input_scale yet); see the manifest")


main.add_command(forward)
main.add_command(build)
main.add_command(bundle)
main.add_command(launch)
main.add_command(verify)
main.add_command(plan)
main.add_command(plugins_cli)

if __name__ == "__main__":
    main()
