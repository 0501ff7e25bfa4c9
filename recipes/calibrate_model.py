"""Fit the performance model's efficiency factors to the published gpt-oss measurements (offline).

    python recipes/calibrate_model.py            # refit, write data/calibration.yaml and CALIBRATION.md
    python recipes/calibrate_model.py --report   # only rewrite CALIBRATION.md from the checked-in fit

The factors of `Efficiency.PER_ARCH` (one set per architecture family) and `Efficiency.GLOBAL` (software
costs shared by all GPUs) jointly minimize the sum of squared log errors over the points (Nelder-Mead in
a bounded, transformed space, several restarts). Points marked `fit: false` (another engine) are
predicted and reported, never fitted.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.calibration import CALIBRATION_FILE, Efficiency, calibration  # noqa: E402
from recipes.hardware import Arch  # noqa: E402
from recipes.published import Point, points, predict  # noqa: E402

REPORT_FILE = Path(__file__).resolve().parent / "CALIBRATION.md"
MEDIAN_GOAL = 0.15  # issue #4: median absolute error at most 15%
# (low, high) bounds of each fitted factor; the optimizer works on logit((x - low) / (high - low))
BOUNDS = {"mem": (0.5, 0.92), "gemm": (0.2, 0.85), "moe": (0.05, 0.85), "seq_us": (0.01, 100.0),
          "layer_us": (1.0, 200.0), "expert_us": (0.01, 50.0),
          "link": (0.05, 0.9)}
START = Efficiency(moe=0.3, seq_us=5.0, layer_us=20.0, expert_us=1.0, link=0.5)
# the fitted vector: every GLOBAL factor once, then every PER_ARCH factor for each architecture
SLOTS = [(None, n) for n in Efficiency.GLOBAL] + [(a, n) for a in Arch for n in Efficiency.PER_ARCH]


MEANING = {
    "moe": "fraction of expert-GEMM peak (FP8 on Blackwell for W4A8, BF16 on Hopper) on large grouped GEMMs",
    "seq_us": "host + sampling cost per sequence per iteration (us)",
    "layer_us": "fixed cost per decoder layer per iteration (us): kernel tails and launches",
    "expert_us": "minimum time of one touched expert's GEMMs per layer (us): pipeline fill and tail",
    "link": "fraction of NVLink bandwidth collectives achieve at MoE-layer granularity (absorbs "
            "attention-DP synchronization)",
    "mem": "fraction of HBM bandwidth on weight, KV and activation streams",
    "gemm": "fraction of BF16 peak on dense GEMMs and attention",
    "step_ms": "fixed cost per iteration (ms)",
    "collective_us": "fixed latency of one all-reduce or all-to-all (us)",
}


def _to_x(effs: dict[Arch, Efficiency]) -> np.ndarray:
    out = []
    for arch, name in SLOTS:
        lo, hi = BOUNDS[name]
        u = (getattr(effs[arch or Arch.BLACKWELL], name) - lo) / (hi - lo)
        u = min(max(u, 1e-6), 1 - 1e-6)
        out.append(math.log(u / (1 - u)))
    return np.array(out)


def _from_x(x: np.ndarray) -> dict[Arch, Efficiency]:
    vals: dict[Arch | None, dict[str, float]] = {a: {} for a in [None, *Arch]}
    for (arch, name), xi in zip(SLOTS, x, strict=True):
        lo, hi = BOUNDS[name]
        vals[arch][name] = lo + (hi - lo) / (1 + math.exp(-min(max(xi, -50.0), 50.0)))
    return {a: replace(START, **vals[None], **vals[a]) for a in Arch}


def loss(effs: dict[Arch, Efficiency], pts: list[Point]) -> float:
    return sum(math.log(predict(p, effs[p.gpu.arch])[0] / p.value) ** 2 for p in pts)


def nelder_mead(f, x0: np.ndarray, step: float = 0.8, iters: int = 600, tol: float = 1e-9) -> np.ndarray:
    """Plain Nelder-Mead (reflection 1, expansion 2, contraction 1/2, shrink 1/2)."""
    simplex = [x0] + [x0 + step * np.eye(len(x0))[i] for i in range(len(x0))]
    vals = [f(x) for x in simplex]
    for _ in range(iters):
        order = np.argsort(vals)
        simplex, vals = [simplex[i] for i in order], [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) < tol:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        xr = centroid + (centroid - simplex[-1])
        fr = f(xr)
        if fr < vals[0]:
            xe = centroid + 2 * (centroid - simplex[-1])
            fe = f(xe)
            simplex[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            simplex[-1], vals[-1] = xr, fr
        else:
            xc = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(xc)
            if fc < vals[-1]:
                simplex[-1], vals[-1] = xc, fc
            else:
                simplex = [simplex[0] + 0.5 * (s - simplex[0]) for s in simplex]
                vals = [f(s) for s in simplex]
    return simplex[int(np.argmin(vals))]


def fit(restarts: int = 6) -> dict[Arch, Efficiency]:
    pts = [p for p in points() if p.fit]
    x = _to_x({a: START for a in Arch})
    best_x, best_loss = x, loss(_from_x(x), pts)
    for _ in range(restarts):
        x = nelder_mead(lambda v: loss(_from_x(v), pts), x, iters=3000)
        if (cl := loss(_from_x(x), pts)) < best_loss:
            best_x, best_loss = x, cl
    return _from_x(best_x)


def write_calibration(fitted: dict[Arch, Efficiency]) -> None:
    header = ("# Efficiency factors of the performance model, fitted by recipes/calibrate_model.py to\n"
              "# data/published.yaml (least squares on log error). `global`: software costs shared by\n"
              "# every GPU; `per_arch`: what each architecture family achieves of its datasheet peaks.\n"
              "# Do not edit by hand: refit. Residuals of every point: recipes/CALIBRATION.md.\n")
    some = next(iter(fitted.values()))
    body = {"global": {n: float(f"{getattr(some, n):.4g}") for n in Efficiency.GLOBAL},
            "per_arch": {a.value: {n: float(f"{getattr(e, n):.4g}") for n in Efficiency.PER_ARCH}
                         for a, e in fitted.items()}}
    CALIBRATION_FILE.write_text(header + yaml.safe_dump(body, sort_keys=False))


def rows() -> list[dict]:
    out = []
    for p in points():
        pred, batch = predict(p)
        out.append({"point": p, "pred": pred, "batch": batch, "err": pred / p.value - 1})
    return out


def render_report() -> str:
    """CALIBRATION.md from the checked-in fit (deterministic: tests compare it with the file)."""
    table = rows()
    fitted = [r for r in table if r["point"].fit]
    med_fit = float(np.median([abs(r["err"]) for r in fitted]))
    med_all = float(np.median([abs(r["err"]) for r in table]))
    worst = max(table, key=lambda r: abs(r["err"]))
    lines = [
        "# Calibration of the planner's performance model",
        "",
        "Generated by `python recipes/calibrate_model.py` from `recipes/data/published.yaml` (sources",
        "quoted there) and the fitted factors in `recipes/data/calibration.yaml`. Residual = predicted /",
        "published - 1. `max_tps_per_gpu` points take the best max_batch_size the memory model allows",
        "(offline max throughput); `b` is the batch per rank the prediction used.",
        "",
        f"**Median absolute error: {med_fit:.1%} over the {len(fitted)} fitted points** "
        f"({med_all:.1%} over all {len(table)} points, goal <= {MEDIAN_GOAL:.0%}). "
        f"Worst: `{worst['point'].id}` at {worst['err']:+.1%}.",
        "",
        "| point | GPU | layout | ISL/OSL | metric | published | predicted | residual | b | fitted |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in table:
        p = r["point"]
        lines.append(f"| {p.source}/{p.model} | {p.gpu.key} | {p.layout.label} | {p.work.isl}/{p.work.osl} | "
                     f"{p.metric.value} | {p.value:,.0f} | {r['pred']:,.0f} | {r['err']:+.1%} | "
                     f"{r['batch']} | {'yes' if p.fit else 'no'} |")
    gaps = [r for r in table if abs(r["err"]) > MEDIAN_GOAL]
    lines += ["", "## The model in short", "",
              "Per iteration and GPU: dense projections, attention (KV reads of the decoding sequences, causal "
              "attention of the admitted prompts), MoE (distinct experts touched by the batch, expert GEMMs "
              "at the GPU's precision: BF16 on Hopper, FP8 for W4A8 and FP4 for NVFP4 on Blackwell) and "
              "lm_head, each the slower of its bytes and its FLOPs; then NVLink collectives and fixed costs. "
              "In-flight batching admits (b - 1) x ISL / OSL prompt tokens per iteration (`recipes/estimate.py`).",
              "", f"## Points off by more than {MEDIAN_GOAL:.0%}", ""]
    lines += [f"- `{r['point'].id}`: {r['err']:+.1%}" for r in gaps] or ["- none"]
    lines += ["", "## Factors", "", "| factor | kind | " + " | ".join(a.value for a in Arch) + " | meaning |",
              "|---|---|" + "---:|" * len(Arch) + "---|"]
    effs = calibration()
    for kind, names in (("fitted per arch", Efficiency.PER_ARCH), ("fitted global", Efficiency.GLOBAL),
                        ("prior", Efficiency.PRIORS)):
        for n in names:
            vals = " | ".join(f"{getattr(effs[a], n):g}" for a in Arch)
            lines.append(f"| {n} | {kind} | {vals} | {MEANING[n]} |")
    lines += ["", "MoE backend speeds relative to the backend the points were measured with are priors in "
              "`recipes/precision.py` (`BACKEND_SPEED`).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true", help="only rewrite CALIBRATION.md")
    args = ap.parse_args(argv)
    if not args.report:
        write_calibration(fit())
        calibration.cache_clear()
    REPORT_FILE.write_text(render_report())
    print(REPORT_FILE.read_text().split("\n\n")[2])


if __name__ == "__main__":
    main()
