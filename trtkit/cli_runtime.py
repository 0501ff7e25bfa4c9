"""`trtkit forward`: run the reference runtime over a checkpoint and write the logits (thin layer)."""

from __future__ import annotations

import math
from pathlib import Path

import click
from click.core import ParameterSource

# verify's random ids: 2**20 positions is far more than a check needs; the logits alone are
# positions x vocab x 4 bytes (for gpt-oss, 0.8 MB a position)
MAX_NUM_TOKENS = 1 << 20


class FiniteFloat(click.FloatRange):
    """click's FloatRange that also refuses nan and +-inf (FloatRange lets both through: nan compares
    false with every bound), so a threshold or a size is always a real number in range."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


@click.command("forward")
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--input-ids", "input_ids", required=True, type=click.Path(path_type=Path),
              help="JSON list of equal-length lists of token ids.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="safetensors file to write: one tensor `logits` float32 [batch, seq, vocab].")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Compute dtype (BF16 weights are upcast exactly for float32).")
@click.option("--stream", is_flag=True, help="Load one layer at a time (peak memory ~ one layer).")
@click.option("--emulate-w4a4", is_flag=True,
              help="Round MoE activations through NVFP4 with the checkpoint's input_scale (NVFP4 only).")
def forward(ckpt: Path, input_ids: Path, out: Path, dtype: str, stream: bool, emulate_w4a4: bool) -> None:
    """Prefill token ids through checkpoint CKPT (MXFP4, BF16 or NVFP4) and save the logits."""
    from builder.checkpoint import Checkpoint
    from builder.runtime import COMPUTE_DTYPES, GptOssRuntime, check_logits_path, load_input_ids, save_logits

    check_logits_path(out)
    checkpoint = Checkpoint.open(ckpt)
    ids = load_input_ids(input_ids, checkpoint.spec.vocab_size,
                         max_length=checkpoint.spec.max_position_embeddings)
    runtime = GptOssRuntime(checkpoint, dtype=COMPUTE_DTYPES[dtype], stream=stream, emulate_w4a4=emulate_w4a4)
    logits = runtime.logits(ids)
    save_logits(out, logits)
    click.echo(f"wrote {out}: logits {list(logits.shape)} float32")


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # one is missing: Checkpoint.open says so
        return False


@click.command("verify")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--input-ids", "input_ids", type=click.Path(path_type=Path), default=None,
              help="JSON list of equal-length lists of token ids (default: --num-tokens random ids, seed 0).")
@click.option("--num-tokens", type=click.IntRange(min=1, max=MAX_NUM_TOKENS), default=256, show_default=True,
              help="Random ids (seed 0) when no --input-ids, in sequences of min(N, 128) tokens; N is "
                   "rounded up to whole sequences (200 runs 2 x 128 = 256 positions); 1 to "
                   f"{MAX_NUM_TOKENS:,}.")
@click.option("--max-kl", type=FiniteFloat(min=0), default=1e-3, show_default=True,
              help="Limit on the mean KL (nats), >= 0.")
@click.option("--min-top1", type=FiniteFloat(min=0, max=1), default=0.99, show_default=True,
              help="Minimum top-1 agreement, a fraction in [0, 1].")
@click.option("--emulate-w4a4", is_flag=True, help="Run the candidate with NVFP4 activations (Blackwell).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def verify(reference: Path, candidate: Path, input_ids: Path | None, num_tokens: int, max_kl: float,
           min_top1: float, emulate_w4a4: bool, dtype: str, as_json: bool) -> None:
    """Compare CANDIDATE with REFERENCE: logits (KL, top-1, max |dlogit|) and expert weights.

    Exits 1 when a threshold fails."""
    import json
    import sys

    from builder.checkpoint import Checkpoint
    from builder.runtime import COMPUTE_DTYPES, load_input_ids
    from builder.verify import Thresholds
    from builder.verify import verify as run_verify

    if input_ids and click.get_current_context().get_parameter_source("num_tokens") is not ParameterSource.DEFAULT:
        raise click.UsageError("--num-tokens sizes the random default ids; --input-ids gives the ids "
                               "themselves: pass one or the other")
    ref_spec = Checkpoint.open(reference).spec
    ids = (load_input_ids(input_ids, ref_spec.vocab_size, max_length=ref_spec.max_position_embeddings)
           if input_ids else None)
    if _same_folder(reference, candidate):
        click.echo(f"trtkit: warning: REFERENCE {reference} and CANDIDATE {candidate} are the same folder; "
                   "the check compares it with itself and passes trivially", err=True)
    report = run_verify(reference, candidate, ids, num_tokens=num_tokens,
                        thresholds=Thresholds(max_kl=max_kl, min_top1=min_top1), emulate_w4a4=emulate_w4a4,
                        dtype=COMPUTE_DTYPES[dtype],
                        log=None if as_json else (lambda m: click.echo(m, err=True)))
    keys = ("kl_mean", "kl_max", "top1_agreement", "max_abs_logit_diff", "exact_tensors", "inexact_tensors",
            "passed")
    if as_json:
        click.echo(json.dumps({k: report.to_json()[k] for k in keys} | {"positions": report.positions}))
    else:
        click.echo(report.summary())
    if not report.passed:
        sys.exit(1)
