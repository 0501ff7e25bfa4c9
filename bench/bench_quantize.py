"""NVFP4 quantization speed on CPU: our ``quantize_nvfp4`` vs ModelOpt's ``NVFP4QTensor.quantize``.

Both sides quantize the same random tensors (default bf16 [2880, 2880], [5760, 2880], [4096, 4096]) in one
run; each figure is the best (and the median) of --repeats after --warmup untimed calls, the two sides
interleaved call by call so load on a shared machine hits both alike; the 1-minute load average is printed
because our many short multi-threaded ops suffer more than ModelOpt's few long ones when other processes
hold the cores. Outputs are checked byte for byte before timing. The figure reported is
ours_time / theirs_time on the best times (< 1: we are faster) and its inverse, the speed-up.
Prints only; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.formats.nvfp4 import NVFP4_BLOCK, quantize_nvfp4  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not like 4096x4096") from None
    if not shape or min(shape) <= 0 or shape[-1] % NVFP4_BLOCK:
        raise argparse.ArgumentTypeError(f"shape {text!r}: positive dims, last a multiple of {NVFP4_BLOCK}")
    return shape


def modelopt_quantize(x: torch.Tensor):
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    qtensor, scale, scale_2 = NVFP4QTensor.quantize(x, NVFP4_BLOCK)
    return qtensor._quantized_data, scale, scale_2


def check_equal(x: torch.Tensor) -> None:
    packed, scale, gs = quantize_nvfp4(x)
    ref_packed, ref_scale, ref_gs = modelopt_quantize(x)
    same = (
        torch.equal(packed, ref_packed)
        and torch.equal(scale.view(torch.uint8), ref_scale.view(torch.uint8))
        and torch.equal(gs.view(torch.int32), ref_gs.reshape(()).view(torch.int32))
    )
    if not same:
        raise SystemExit(f"outputs differ from ModelOpt for shape {tuple(x.shape)}")


SIDES: dict[str, Callable[[torch.Tensor], object]] = {"ours": quantize_nvfp4, "modelopt": modelopt_quantize}


def wall_times(x: torch.Tensor, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Wall times in seconds per side, the sides interleaved call by call."""
    for _ in range(warmup):
        for fn in SIDES.values():
            fn(x)
    times: dict[str, list[float]] = {name: [] for name in SIDES}
    for _ in range(repeats):
        for name, fn in SIDES.items():
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)
    return times


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for shape in args.sizes:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed)).to(DTYPES[args.dtype])
        check_equal(x)
        times = wall_times(x, args.warmup, args.repeats)
        best = {name: min(t) for name, t in times.items()}
        median = {name: statistics.median(t) for name, t in times.items()}
        rows.append({
            "shape": list(shape), "dtype": args.dtype, "ours_ms": round(best["ours"] * 1e3, 2),
            "modelopt_ms": round(best["modelopt"] * 1e3, 2),
            "ours_median_ms": round(median["ours"] * 1e3, 2), "modelopt_median_ms": round(median["modelopt"] * 1e3, 2),
            "ours_over_theirs": round(best["ours"] / best["modelopt"], 4),
            "speedup": round(best["modelopt"] / best["ours"], 2), "equal": True,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_shape, nargs="+", default=[(2880, 2880), (5760, 2880), (4096, 4096)],
                        help="tensor shapes like 4096x4096 (last dim a multiple of 16)")  # fmt: skip
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side before timing")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per side; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.warmup < 0 or args.repeats < 1:
        parser.error("--warmup must be >= 0 and --repeats >= 1")
    load_before = os.getloadavg()[0]
    rows = run(args)
    machine = {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
               "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}  # fmt: skip
    if args.json:
        print(json.dumps({"bench": "quantize_nvfp4", "machine": machine, "results": rows}))
        return
    print(f"quantize_nvfp4 vs NVFP4QTensor.quantize ({args.dtype}, best of {args.repeats}, {machine})")
    print(
        f"{'shape':>14} {'ours ms':>9} {'modelopt ms':>12} {'ours/theirs':>12} {'speed-up':>9}   medians (ms)"
    )
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(f"{shape:>14} {r['ours_ms']:>9.1f} {r['modelopt_ms']:>12.1f} {r['ours_over_theirs']:>12.3f} "
              f"{r['speedup']:>8.1f}x   {r['ours_median_ms']:.1f} / {r['modelopt_median_ms']:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
