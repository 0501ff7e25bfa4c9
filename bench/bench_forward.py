"""Prefill throughput of the reference runtime vs transformers' gpt-oss on CPU, same weights, one run.

A random gpt-oss (default: 4 layers, 16 experts top-4, hidden 256, GQA 8/2, vocab 2048) is built with
transformers, cast to BF16 and saved; both sides load that folder in float32 and prefill the same
[batch, seq] ids (default 4 x 128, longer than the sliding window 64). Each side's time is the best of
--repeats after one warm-up. transformers runs eager attention (gpt-oss has no SDPA path) with both of
its CPU expert implementations: its default ("grouped_mm") and the per-expert loop ("eager").
The figure reported: ours_time / theirs_time against the faster transformers variant (< 1: we are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builder.runtime import GptOssRuntime  # noqa: E402

IMPLS = ("grouped_mm", "eager")  # transformers' CPU expert implementations


def build_folder(out: Path, args: argparse.Namespace) -> None:
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(
        num_hidden_layers=args.layers, num_local_experts=args.experts, num_experts_per_tok=args.top_k,
        hidden_size=args.hidden, intermediate_size=args.hidden, num_attention_heads=8, num_key_value_heads=2,
        head_dim=args.hidden // 8, vocab_size=args.vocab, sliding_window=64, max_position_embeddings=4096,
        tie_word_embeddings=False, architectures=["GptOssForCausalLM"],
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 128})
    torch.manual_seed(0)
    model = GptOssForCausalLM(cfg)
    with torch.no_grad():  # biases and sinks are zero-initialized by transformers: give them values
        for name, p in model.named_parameters():
            if name.endswith(("bias", "sinks")):
                p.normal_(0.0, 0.1)
    model.to(torch.bfloat16).save_pretrained(out)


def best_of(fns: dict[str, Callable[[], torch.Tensor]], repeats: int) -> tuple[dict, dict]:
    """Best wall time of each contender; rounds are interleaved so load changes hit all alike."""
    out = {k: fn() for k, fn in fns.items()}  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            out[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best, out


def transformers_forward(folder: Path, impl: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from transformers import GptOssForCausalLM

    model = GptOssForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager",
                                              experts_implementation=impl).eval()

    def run(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(ids).logits

    return run


def measure(folder: Path, ids: torch.Tensor, repeats: int) -> dict:
    ours = GptOssRuntime.open(folder)
    fns = {"ours": lambda: ours.logits(ids)}
    for impl in IMPLS:
        fn = transformers_forward(folder, impl)
        fns[impl] = lambda fn=fn: fn(ids)
    best, logits = best_of(fns, repeats)
    theirs = min(best[impl] for impl in IMPLS)
    tokens = ids.numel()
    return {"ours_s": best["ours"], **{f"transformers_{i}_s": best[i] for i in IMPLS},
            "ours_tokens_per_s": tokens / best["ours"], "theirs_tokens_per_s": tokens / theirs,
            "ratio_ours_over_theirs": best["ours"] / theirs,
            "max_abs_logit_diff": max(float((logits["ours"] - logits[i]).abs().max()) for i in IMPLS)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build_folder(folder, args)
        ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
        res = measure(folder, ids, args.repeats)
    res.update(config={k: v for k, v in vars(args).items() if k != "json"}, torch_threads=torch.get_num_threads(),
               machine=f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}")
    if args.json:
        print(json.dumps(res))
        return
    tokens = args.batch * args.seq
    print(f"prefill {args.batch} x {args.seq} = {tokens} tokens, float32, best of {args.repeats}")
    print(f"  ours                      {res['ours_s'] * 1e3:8.1f} ms  {res['ours_tokens_per_s']:9.0f} tok/s")
    for impl in IMPLS:
        s = res[f"transformers_{impl}_s"]
        print(f"  transformers ({impl:10s}) {s * 1e3:8.1f} ms  {tokens / s:9.0f} tok/s")
    print(f"  ratio ours/theirs (best transformers) = {res['ratio_ours_over_theirs']:.2f}; "
          f"max |Δlogit| = {res['max_abs_logit_diff']:.1e}")


if __name__ == "__main__":
    main()
