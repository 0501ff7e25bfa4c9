"""Time the planner's full search: gpt-oss-120b on a 72-GPU GB200 NVL72 rack (issue #4: under 2 s).

    python bench/bench_plan.py [--repeats N] [--json]

Reports the best of N wall times of `recipes.search.search` (the import and the first call's table
loading are excluded by a warm-up call), plus the end-to-end `trtkit plan` CLI time once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes.hardware import gpu  # noqa: E402
from recipes.memory import Workload  # noqa: E402
from recipes.model import resolve_model  # noqa: E402
from recipes.search import PlanRequest, search  # noqa: E402

LIMIT_S = 2.0


def time_search(model: str, gpu_key: str, gpus: int, isl: int, osl: int, repeats: int) -> dict:
    req = PlanRequest(model=resolve_model(model), gpu=gpu(gpu_key), work=Workload(isl, osl), gpus=gpus)
    result = search(req)  # warm-up: caches the GPU catalog, calibration and tensor tables
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = search(req)
        times.append(time.perf_counter() - t0)
    return {"model": model, "gpu": gpu_key, "gpus": gpus, "isl": isl, "osl": osl, "repeats": repeats,
            "best_s": min(times), "median_s": sorted(times)[len(times) // 2],
            "layouts": result.layouts_evaluated, "deployments": result.deployments_evaluated,
            "feasible": len(result.candidates), "frontier": len(result.frontier)}


def time_cli(model: str, gpu_key: str, gpus: int, isl: int, osl: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "trtkit.cli", "plan", "--model", model, "--gpu", gpu_key, "--gpus", str(gpus),
               "--isl", str(isl), "--osl", str(osl), "--out", tmp, "--json"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--no-cli", action="store_true", help="skip the end-to-end CLI timing")
    args = ap.parse_args()
    out = time_search("gpt-oss-120b", "gb200", 72, 1024, 1024, args.repeats)
    out["cli_s"] = None if args.no_cli else time_cli("gpt-oss-120b", "gb200", 72, 1024, 1024)
    out["limit_s"] = LIMIT_S
    out["within_limit"] = out["best_s"] < LIMIT_S
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    if args.json:
        print(json.dumps(out))
        return
    print(f"search {out['model']} on {out['gpus']} x {out['gpu']}: best {out['best_s'] * 1e3:.0f} ms of "
          f"{out['repeats']} (median {out['median_s'] * 1e3:.0f} ms), {out['layouts']} layouts, "
          f"{out['deployments']} deployments, {out['feasible']} feasible, {out['frontier']} on the frontier")
    if out["cli_s"] is not None:
        print(f"`trtkit plan` end to end (imports, search, recipes, frontier.png): {out['cli_s']:.2f} s")
    print(f"limit {LIMIT_S} s: {'ok' if out['within_limit'] else 'EXCEEDED'}")


if __name__ == "__main__":
    main()
