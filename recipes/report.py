"""Text and JSON views of a search (the CLI prints these; nothing here computes)."""

from __future__ import annotations

from typing import Any

from recipes.search import Candidate, SearchResult

COLUMNS = ("pick", "GPUs/inst", "layout", "batch", "conc/inst", "replicas", "TTFT ms", "TPOT ms",
           "tok/s/user", "tok/s/GPU", "fleet tok/s")


def candidate_dict(c: Candidate) -> dict[str, Any]:
    lay = c.layout
    return {"tp": lay.tp, "ep": lay.ep, "moe_tp": lay.moe_tp, "attention_dp": lay.attention_dp,
            "moe_backend": lay.moe_backend.value, "quant": lay.quant.value, "kv_dtype": lay.kv_dtype.value,
            "max_batch_size": c.batch, "concurrency_per_instance": c.concurrency, "replicas": c.replicas,
            "fleet_gpus": c.fleet_gpus, "users": c.users, "max_concurrency_per_instance": c.max_concurrency,
            "ttft_ms": c.ttft_ms, "tpot_ms": c.tpot_ms, "tps_per_user": c.tps_per_user,
            "tps_per_gpu": c.tps_per_gpu, "tps_instance": c.tps_instance, "tps_fleet": c.tps_fleet}


def result_dict(result: SearchResult) -> dict[str, Any]:
    req = result.request
    return {
        "model": req.model.name, "gpu": req.gpu.key, "gpus": req.gpus, "isl": req.work.isl,
        "osl": req.work.osl, "sla": req.sla.describe(), "target_users": req.target_users,
        "layouts_evaluated": result.layouts_evaluated, "deployments_evaluated": result.deployments_evaluated,
        "feasible": len(result.candidates),
        "frontier": [candidate_dict(c) for c in result.frontier],
        "picks": {p.value: candidate_dict(c) for p, c in result.picks.items()},
        "fleet_pick": candidate_dict(result.fleet_pick) if result.fleet_pick else None,
    }


def _row(c: Candidate, mark: str) -> tuple[str, ...]:
    return (mark, str(c.layout.tp), c.layout.label, str(c.batch), str(c.concurrency), str(c.replicas),
            f"{c.ttft_ms:.1f}", f"{c.tpot_ms:.2f}", f"{c.tps_per_user:.1f}", f"{c.tps_per_gpu:,.0f}",
            f"{c.tps_fleet:,.0f}")


def frontier_table(result: SearchResult) -> str:
    marks: dict[int, list[str]] = {}
    for p, c in result.picks.items():
        marks.setdefault(id(c), []).append(p.value)
    rows = [COLUMNS] + [_row(c, ",".join(marks.get(id(c), []))) for c in result.frontier]
    if result.fleet_pick is not None:
        rows.append(_row(result.fleet_pick, "fleet"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.rjust(w) if i > 2 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(result: SearchResult) -> str:
    req = result.request
    where = f"{req.gpus} x {req.gpu.name}" if req.gpus else f"{req.gpu.name} fleet"
    head = (f"{req.model.name} on {where}, ISL {req.work.isl} / OSL {req.work.osl}, SLA {req.sla.describe()}: "
            f"{result.layouts_evaluated} layouts x batch sizes -> {len(result.candidates)} feasible, "
            f"{len(result.frontier)} on the frontier")
    if result.fleet_pick is not None:
        f = result.fleet_pick
        head += (f"\nfleet for {req.target_users} users: {f.fleet_gpus} GPUs = {f.replicas} x "
                 f"{f.layout.tp} ({f.layout.label}, batch {f.batch}, {f.tps_per_user:.1f} tokens/s/user)")
    return head
