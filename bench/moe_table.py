"""BENCHMARKS.md's MoE decode table and the planner's speed prior from one `bench_gpu.py --out` JSON.

    python bench/moe_table.py build/bench_gpu.json [--storage frag|spread|kmajor] [--json]

Prints the markdown rows for the storage the plugin serves with (frag where the run timed it: what `auto`, the default of
`plugins.trtllm.STORAGES`, picks on Hopper; else spread) unless --storage says otherwise, the next storage's graph time and
bandwidth fraction beside them (frag: spread's; spread: kmajor's), and
`TRTKIT_SPEED` recomputed from those rows (`recipes.perf.plugin_speed_prior`, the median of the model's
prediction over the measured time, the number tests/test_recipes_trtkit.py checks against the table).
Runs on any machine: it only reads the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.node import GPU_KEYS  # noqa: E402
from recipes.perf import plugin_speed_prior  # noqa: E402

ROW_KEYS = {"kmajor": "rows", "spread": "spread_rows", "frag": "frag_rows"}  # bench_gpu's JSON lists, by storage
OTHER = {"frag": "spread", "spread": "kmajor", "kmajor": "spread"}  # the storage timed beside it in the table
# what the plugin's default storage (auto) serves with: frag where the run timed it (Hopper with Gluon), else spread
DEFAULT_STORAGES = ("frag", "spread")
ROW_FIELDS = ("shape", "batch", "active_experts", "weight_mb", "us_graph", "us_eager", "weight_gb_s", "frac_copy_bw")
HEADER = ("| shape | batch | experts hit | weight MB | us (graph) | us (eager) | GB/s | of copy BW "
          "| {other} us | {other} of copy BW | baseline us | speed-up (eager) |")


def rows_by_point(result: dict, storage: str) -> dict[tuple[str, int], dict]:
    """(shape, batch) -> the JSON row of one storage; a clear error when the run did not time it."""
    moe = result.get("moe")
    if not isinstance(moe, dict) or not moe.get(ROW_KEYS[storage]):
        raise SystemExit(f"moe_table: the JSON has no '{ROW_KEYS[storage]}' under 'moe' ({storage} storage "
                         f"not timed); rerun bench_gpu.py with --only moe --storage {storage}")
    rows = moe[ROW_KEYS[storage]]
    for i, r in enumerate(rows):
        missing = [k for k in ROW_FIELDS if not isinstance(r, dict) or k not in r]
        if missing:
            raise SystemExit(f"moe_table: moe.{ROW_KEYS[storage]}[{i}] lacks {', '.join(missing)}; pass the JSON "
                             "bench_gpu.py --out wrote, unedited")
    return {(r["shape"], r["batch"]): r for r in rows}


def gpu_key(result: dict) -> str:
    """The catalog GPU the run was on (its nvidia-smi name), whose model the prior is fitted against."""
    name = str((result.get("machine") or {}).get("gpu", "")).upper()
    key = next((k for needle, k in GPU_KEYS if needle in name), None)
    if key is None:
        raise SystemExit(f"moe_table: the run's GPU {name or '(none recorded)'!r} is not one of the catalog's "
                         f"({', '.join(k for _, k in GPU_KEYS)}); pass --gpu")
    return key


def table(result: dict, storage: str, gpu: str) -> tuple[list[str], float]:
    """Markdown lines (header, rule, one row per point) and the speed prior fitted to them on `gpu`."""
    timed = {s: rows_by_point(result, s) for s, key in ROW_KEYS.items() if s == storage or result["moe"].get(key)}
    main = timed[storage]
    other_storage = OTHER[storage]
    other, base = timed.get(other_storage, {}), timed.get("kmajor", {})  # the baseline was timed on kmajor
    lines = [HEADER.format(other=other_storage), "|" + "---|" * 12]
    for (shape, batch), r in main.items():
        o, b = other.get((shape, batch)), base.get((shape, batch), {}).get("us_dequant_baseline")
        cells = [shape, batch, f"{r['active_experts']:g}", f"{r['weight_mb']:.1f}", f"{r['us_graph']:.1f}",
                 f"{r['us_eager']:.1f}", r["weight_gb_s"], f"**{r['frac_copy_bw']:.2f}**",
                 f"{o['us_graph']:.1f}" if o else "-", f"{o['frac_copy_bw']:.2f}" if o else "-",
                 b if b is not None else "-", f"{b / r['us_eager']:.1f}x" if b is not None else "-"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    prior = plugin_speed_prior([(s, n, r["us_graph"]) for (s, n), r in main.items()], gpu)
    return lines, prior


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", type=Path, help="bench_gpu.py --out JSON")
    ap.add_argument("--storage", choices=sorted(ROW_KEYS), default=None,
                    help="the storage the table reports (default: what the plugin serves with: frag where the run "
                         "timed it, i.e. Hopper with Gluon, else spread)")
    ap.add_argument("--gpu", default=None, help="catalog GPU the prior is fitted on (default: the run's GPU)")
    ap.add_argument("--json", action="store_true", help="print {lines, trtkit_speed} as JSON")
    args = ap.parse_args()
    try:
        result = json.loads(args.result.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"moe_table: cannot read {args.result}: {exc}; pass the file bench_gpu.py --out wrote") from None
    if not isinstance(result, dict) or not isinstance(result.get("moe"), dict):
        raise SystemExit(f"moe_table: {args.result} holds no 'moe' results; run bench_gpu.py with --only moe")
    gpu = args.gpu or gpu_key(result)
    if args.storage is None:
        args.storage = next((st for st in DEFAULT_STORAGES if result["moe"].get(ROW_KEYS[st])), DEFAULT_STORAGES[0])
    lines, prior = table(result, args.storage, gpu)
    c = result.get("ceilings", {})
    if args.json:
        print(json.dumps({"storage": args.storage, "gpu": gpu, "lines": lines, "trtkit_speed": round(prior, 3),
                          "copy_gb_s": c.get("copy_gb_s"), "machine": result.get("machine")}))
        return
    print(f"<!-- {result.get('machine')}; copy {c.get('copy_gb_s')} GB/s; storage {args.storage} -->")
    print("\n".join(lines))
    print(f"\nrecipes.precision.TRTKIT_SPEED = {prior:.2f}  (median predicted / measured on {gpu} over "
          f"{len(lines) - 2} rows)")


if __name__ == "__main__":
    main()
