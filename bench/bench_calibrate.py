"""Calibration cost: peak RSS and wall time to collect activation amax over N tokens with the
layer-streaming runtime (BF16), in a child process so `ru_maxrss` is the calibration's alone.

    python bench/bench_calibrate.py --src build/bench/gpt-oss-20b --tokens 256 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = """
import sys, torch
from builder.calibrate import CalibrationData, collect_amax
src, tokens, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from builder.checkpoint import Checkpoint
vocab = Checkpoint.open(src).spec.vocab_size
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, vocab, (tokens,), generator=g).tolist()
data = CalibrationData(tuple(tuple(ids[i:i + seq]) for i in range(0, tokens, seq)), "bench")
amax = collect_amax(src, data)
print(len(amax))
"""


def measure(src: str, tokens: int, seq: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, src, str(tokens), str(seq)], stdout=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"calibration child failed on {src}")
    return {"src": src, "tokens": tokens, "seq_len": seq, "wall_s": round(wall, 2),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", action="append", required=True, help="checkpoint folder (repeatable)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [measure(s, args.tokens, args.seq_len) for s in args.src]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['src']}: {r['tokens']} tokens in {r['wall_s']} s, peak RSS {r['peak_rss_gib']} GiB")


if __name__ == "__main__":
    main()
