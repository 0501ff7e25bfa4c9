"""`make bench`: the conversion benchmarks of BENCHMARKS.md, each a ratio measured in one run.

  quantize  NVFP4 quantize throughput, ours vs Model Optimizer's NVFP4QTensor (bench_quantize.py)
  convert   synthetic gpt-oss-20b: convert wall time / `cp -r` of the same folder, peak RSS
  depth     synthetic gpt-oss-120b cut to a few layers: peak RSS (memory must not grow with size)
  mpi       `mpiexec -n 2` vs `-n 1` convert wall time on the 20b checkpoint
  forward   runtime tokens/s vs transformers (bench_forward.py)
  calibrate peak RSS and time to calibrate 256 tokens, 20b and 120b cut to 2 and 4 layers
  plan      the full 72 x GB200 planner search (bench_plan.py)

Peak RSS is the child's own `ru_maxrss` (os.wait4), so each figure belongs to one process tree leaf.
Results go to stdout as a table and, with --json, as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TRTKIT = [sys.executable, "-m", "trtkit.cli"]


def run(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd`; return (wall seconds, peak RSS GiB of the child)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 2**20  # KiB -> GiB


def du_gb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e9


def ensure_synth(folder: Path, shape: str, layers: int | None) -> None:
    marker = folder / "trtkit_synth.json"
    if marker.is_file():
        meta = json.loads(marker.read_text())
        if meta["shape"] == shape and (layers is None or meta["layers"] == layers):
            return
    args = ["synth", "--quiet", "--force", "--shape", shape, str(folder)]
    if layers:
        args[1:1] = ["--layers", str(layers)]
    wall, _ = run([*TRTKIT, *args])
    print(f"  synthesized {shape} ({du_gb(folder):.1f} GB) in {wall:.0f} s", flush=True)


def convert_once(src: Path, out: Path, ranks: int = 1) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*TRTKIT, "convert", "--quiet", str(src), str(out)]
    if ranks > 1:
        cmd = [shutil.which("mpiexec", path=str(BIN)) or "mpiexec", "-n", str(ranks), *cmd]
    result = run(cmd)
    shutil.rmtree(out, ignore_errors=True)
    return result


def cp_once(src: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    wall, _ = run(["cp", "-r", str(src), str(out)])
    shutil.rmtree(out, ignore_errors=True)
    return wall


def bench_convert(work: Path, repeats: int) -> dict:
    src = work / "gpt-oss-20b"
    ensure_synth(src, "gpt-oss-20b", None)
    cps, convs, rss = [], [], []
    for _ in range(repeats):  # interleaved, so both see the same page-cache state
        cps.append(cp_once(src, work / "cp-out"))
        wall, peak = convert_once(src, work / "conv-out")
        convs.append(wall)
        rss.append(peak)
    return {"source_gb": round(du_gb(src), 2), "cp_s": round(min(cps), 2), "convert_s": round(min(convs), 2),
            "ratio_convert_over_cp": round(min(convs) / min(cps), 3), "peak_rss_gib": round(max(rss), 3),
            "goal": "ratio <= 1.5, peak RSS <= 2 GiB"}


def bench_depth(work: Path, layers: int) -> dict:
    src = work / f"gpt-oss-120b-{layers}l"
    ensure_synth(src, "gpt-oss-120b", layers)
    wall, peak = convert_once(src, work / "conv120-out")
    return {"layers": layers, "source_gb": round(du_gb(src), 2), "convert_s": round(wall, 2),
            "peak_rss_gib": round(peak, 3), "goal": "peak RSS <= 2 GiB, as for 20b"}


def bench_mpi(work: Path) -> dict:
    src = work / "gpt-oss-20b"
    ensure_synth(src, "gpt-oss-20b", None)
    one, _ = convert_once(src, work / "mpi-out", 1)
    two, _ = convert_once(src, work / "mpi-out", 2)
    return {"n1_s": round(one, 2), "n2_s": round(two, 2), "speedup": round(one / two, 3)}


def bench_calibrate(work: Path) -> list[dict]:
    srcs = [(work / "gpt-oss-20b", "gpt-oss-20b", None), (work / "gpt-oss-120b-2l", "gpt-oss-120b", 2),
            (work / "gpt-oss-120b-4l", "gpt-oss-120b", 4)]
    for folder, shape, layers in srcs:
        ensure_synth(folder, shape, layers)
    args = [a for folder, _, _ in srcs for a in ("--src", str(folder))]
    return bench_script("bench_calibrate.py", ["--tokens", "256", *args])


def bench_script(name: str, extra: list[str]) -> dict | list | None:
    script = HERE / name
    if not script.is_file():
        return None
    out = subprocess.run([sys.executable, str(script), "--json", *extra], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="quantize,convert,depth,mpi,forward,calibrate,plan")
    ap.add_argument("--workdir", type=Path, default=Path("build/bench"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--depth-layers", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    todo = args.only.split(",")
    results: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
                     "date": time.strftime("%Y-%m-%d")}
    table = {
        "quantize": lambda: bench_script("bench_quantize.py", []),
        "convert": lambda: bench_convert(args.workdir, args.repeats),
        "depth": lambda: bench_depth(args.workdir, args.depth_layers),
        "mpi": lambda: bench_mpi(args.workdir),
        "forward": lambda: bench_script("bench_forward.py", []),
        "calibrate": lambda: bench_calibrate(args.workdir),
        "plan": lambda: bench_script("bench_plan.py", []),
    }
    for name in todo:
        print(f"[bench] {name} ...", flush=True)
        results[name] = table[name]()
        print(f"[bench] {name}: {json.dumps(results[name])}", flush=True)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
