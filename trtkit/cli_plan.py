"""`trtkit plan`: search deployments and write recipes; `trtkit plan estimate`: one deployment's numbers.

A thin layer over `recipes.*`: the library raises `TrtkitError`s, which `trtkit.cli` prints as one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from recipes.hardware import gpus
from recipes.precision import Checkpoint, KvDtype, MoeBackend, QuantAlgo
from trtkit.cli_runtime import FiniteFloat

GPU_CHOICE = click.Choice(sorted(gpus()), case_sensitive=False)
MAX_GPUS = 1 << 20  # a fleet beyond any cluster; larger is a typo (an extra digit or two)
SLA_FLOAT = FiniteFloat(min=0, min_open=True)  # > 0 and finite: nan or inf is no SLA a deployment can meet


def _workload_options(f):
    f = click.option("--osl", type=click.IntRange(min=1), required=False, help="Output tokens per request.")(f)
    return click.option("--isl", type=click.IntRange(min=1), required=False, help="Input tokens per request.")(f)


@click.group("plan", invoke_without_command=True)
@click.option("--model", "model_name", help="gpt-oss-20b | gpt-oss-120b | a gpt-oss checkpoint folder.")
@click.option("--gpu", "gpu_key", type=GPU_CHOICE, help="GPU type (catalog: recipes/data/gpus.yaml).")
@click.option("--gpus", type=click.IntRange(1, MAX_GPUS), default=None,
              help=f"Fleet size in GPUs (1 to {MAX_GPUS}).")
@_workload_options
@click.option("--max-ttft-ms", type=SLA_FLOAT, default=None,
              help="SLA: time to first token, ms.")
@click.option("--max-tpot-ms", type=SLA_FLOAT, default=None,
              help="SLA: time per output token, ms.")
@click.option("--min-tps-user", type=SLA_FLOAT, default=None,
              help="SLA: output tokens/s seen by each user.")
@click.option("--target-users", type=click.IntRange(min=1), default=None,
              help="Concurrent users to serve: size the fleet (fewest GPUs).")
@click.option("--checkpoint", type=click.Choice([c.value for c in Checkpoint]), default=None,
              help="Serve only this checkpoint: nvfp4 (trtkit's; on Hopper through the trtkit::moe plugin) or "
                   "mxfp4 (the release). Default: whichever deploys best.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("trtkit-plan"), show_default=True,
              help="Folder for frontier.png and the latency/balanced/throughput recipes (written whole or not at all).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.pass_context
def plan(ctx: click.Context, model_name: str | None, gpu_key: str | None, gpus: int | None, isl: int | None,
         osl: int | None, max_ttft_ms: float | None, max_tpot_ms: float | None, min_tps_user: float | None,
         target_users: int | None, checkpoint: str | None, out: Path, force: bool, as_json: bool) -> None:
    """Search every tensor/expert-parallel deployment of MODEL on GPUs; print the Pareto frontier of
    tokens/s/GPU vs tokens/s/user and write the recipes of the latency, balanced and throughput picks."""
    if ctx.invoked_subcommand is not None:
        _refuse_search_options(ctx)
        return
    missing = [flag for flag, v in (("--model", model_name), ("--gpu", gpu_key), ("--isl", isl), ("--osl", osl))
               if v is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (see `trtkit plan --help`)")
    from recipes.hardware import gpu
    from recipes.memory import Workload
    from recipes.model import resolve_model
    from recipes.render import write_plan
    from recipes.report import frontier_table, result_dict, summary
    from recipes.search import PlanRequest, Sla, search

    req = PlanRequest(model=resolve_model(model_name), gpu=gpu(gpu_key), work=Workload(isl, osl), gpus=gpus,
                      sla=Sla(max_ttft_ms, max_tpot_ms, min_tps_user), target_users=target_users,
                      checkpoint=Checkpoint(checkpoint) if checkpoint else None)
    result = search(req)
    folders, png = write_plan(result, out, force)
    if as_json:
        doc = {**result_dict(result), "recipes": {p.value: str(f) for p, f in folders.items()},
               "frontier_png": str(png)}
        click.echo(json.dumps(doc))
        return
    click.echo(summary(result))
    click.echo(frontier_table(result))
    click.echo(f"wrote {png} and recipes {', '.join(str(f) for f in folders.values())}")


def _refuse_search_options(ctx: click.Context) -> None:
    """`trtkit plan --gpus 8 estimate ...`: the search's options never reach a subcommand; refuse them
    rather than drop them silently."""
    sub = ctx.command.get_command(ctx, ctx.invoked_subcommand)
    given = [p for p in ctx.command.params
             if ctx.get_parameter_source(p.name) not in (None, click.core.ParameterSource.DEFAULT)]
    if not given:
        return
    own = {o for p in sub.params for o in p.opts}
    move = [p.opts[0] for p in given if p.opts[0] in own]
    drop = [p.opts[0] for p in given if p.opts[0] not in own]
    fixes = ([f"put {', '.join(move)} after `{sub.name}`"] if move else []) + \
            ([f"drop {', '.join(drop)} (`plan {sub.name}` has no such option{'s' if len(drop) > 1 else ''})"]
             if drop else [])
    from recipes.errors import PlanUsageError

    raise PlanUsageError(f"`trtkit plan {sub.name}` never sees the search options given before it "
                         f"({', '.join(p.opts[0] for p in given)}): {'; '.join(fixes)}")


@plan.command("estimate")
@click.option("--model", "model_name", required=True, help="gpt-oss-20b | gpt-oss-120b | a checkpoint folder.")
@click.option("--gpu", "gpu_key", type=GPU_CHOICE, required=True)
@click.option("--tp", type=click.IntRange(min=1), required=True, help="tensor_parallel_size: GPUs of the instance.")
@click.option("--ep", type=click.IntRange(min=1), default=1, show_default=True,
              help="moe_expert_parallel_size (MoE TP = tp / ep).")
@click.option("--attention-dp", is_flag=True, help="enable_attention_dp (batch then counts per rank).")
@click.option("--batch", type=click.IntRange(min=1), required=True,
              help="max_batch_size (per rank under attention DP).")
@click.option("--isl", type=click.IntRange(min=1), required=True)
@click.option("--osl", type=click.IntRange(min=1), required=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Requests the clients keep in flight (default: batch x attention-DP ranks).")
@click.option("--moe-backend", type=click.Choice([b.value for b in MoeBackend]), default=None,
              help="Default: the architecture's first backend that accepts this MoE TP.")
@click.option("--quant", type=click.Choice([q.value for q in QuantAlgo]), default=None,
              help="Expert precision. Default: NVFP4 on Blackwell, W4A16_MXFP4 on Hopper (W4A16_NVFP4: the NVFP4 "
                   "checkpoint through trtkit::moe, tp 1).")
@click.option("--kv-dtype", type=click.Choice([k.value for k in KvDtype]), default=KvDtype.FP8.value,
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def estimate(model_name: str, gpu_key: str, tp: int, ep: int, attention_dp: bool, batch: int, isl: int, osl: int,
             concurrency: int | None, moe_backend: str | None, quant: str | None, kv_dtype: str,
             as_json: bool) -> None:
    """Predict TTFT, TPOT, tokens/s/user and tokens/s/GPU of one deployment, with the arithmetic."""
    from recipes.estimate import estimate as run_estimate
    from recipes.hardware import gpu
    from recipes.layout import Layout, default_backend
    from recipes.memory import Workload
    from recipes.model import resolve_model
    from recipes.precision import ARCH_PRECISION

    g = gpu(gpu_key)
    moe_tp = tp // ep if ep and tp % ep == 0 else 0
    q = QuantAlgo(quant) if quant else ARCH_PRECISION[g.arch].quants[0]
    lay = Layout(tp=tp, ep=ep, attention_dp=attention_dp,
                 moe_backend=MoeBackend(moe_backend) if moe_backend else default_backend(g, moe_tp, q),
                 quant=q, kv_dtype=KvDtype(kv_dtype))
    est = run_estimate(resolve_model(model_name).spec, g, lay, batch, Workload(isl, osl), concurrency)
    if as_json:
        click.echo(json.dumps(est.to_dict()))
        return
    click.echo(f"{model_name} on {tp} x {g.name} ({lay.label}), batch {batch}, ISL {isl} / OSL {osl}")
    click.echo(f"TTFT {est.ttft_ms:.1f} ms  TPOT {est.tpot_ms:.2f} ms  {est.tps_per_user:.1f} tokens/s/user  "
               f"{est.tps_per_gpu:,.0f} tokens/s/GPU  fits memory: {est.fits_memory} "
               f"(max concurrency {est.max_concurrency})")
