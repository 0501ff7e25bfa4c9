"""The bundle's README.md, written for the operator who has to launch it."""

from __future__ import annotations

from pathlib import Path


def write_operator_readme(out: Path, *, src: Path, recipes: list[dict], exact: dict, w4a4: dict,
                          cast: dict | None) -> None:
    rows = [f"| {r['gpu']} | {r['profile']} | {r['layout']} | {r['checkpoint']} | {r['tps_per_user']:.0f} | "
            f"{r['tps_per_gpu']:.0f} | {r['ttft_ms']:.0f} | `{r['path']}` |" for r in recipes]
    blocks = (f"{cast['exact']} MXFP4 blocks cast exactly, {cast['fallback']} requantized"
              if cast else "experts quantized from BF16")
    text = f"""# trtkit engine bundle

A TensorRT-LLM "engine" today is a Hugging Face checkpoint folder plus an options YAML: this bundle holds
both, proven against the source model before any GPU sees it.

| path | what |
|---|---|
| `checkpoint/` | NVFP4 experts (W4A4, calibrated `input_scale`), BF16 elsewhere, Model Optimizer layout |
| `recipes/<gpu>/<profile>/` | `options.yaml` for `trtllm-serve`, `serve.sh`, Slurm, Kubernetes, Dynamo, `recipe.yaml` |
| `recipes/<hopper gpu>/<profile>-nvfp4/` | the same for `checkpoint/` on Hopper, its MoE on the trtkit::moe plugin (one GPU per instance; trtkit must be importable where it runs: `TRTKIT_DIR`) |
| `verification.json`, `VERIFICATION.md` | logits and weights compared with the source ({blocks}) |
| `manifest.json` | sha256 and size of every file; `trtkit bundle check .` re-verifies them, `trtkit launch` refuses a bundle that does not match (weights by size; `--verify-weights` hashes them too) |

Source checkpoint: `{src.resolve()}` (Hopper recipes serve it directly: H100/H200 have no FP4 hardware,
so they run the MXFP4 source weights with BF16 activations). Hopper's `-nvfp4` recipes serve `checkpoint/`
instead: its NVFP4 experts are decoded to BF16 inside trtkit's Triton MoE kernel, so a mixed fleet can
run this one checkpoint everywhere (`trtkit launch . --checkpoint nvfp4`; predicted slower than the
MXFP4 path, see `BENCHMARKS.md` of trtkit).

## Launch

```bash
trtkit launch .                      # checks the node (NVML), picks the recipe that fits, starts trtllm-serve
trtkit launch . --profile latency --dry-run   # show the decision, the checks and the exact command
trtkit launch . --checkpoint nvfp4   # Hopper: serve this bundle's checkpoint through trtkit::moe
```

Or by hand: `bash recipes/<gpu>/<profile>/serve.sh` on one node, `sbatch recipes/<gpu>/<profile>/slurm.sbatch`
for Slurm, `kubectl apply -f recipes/<gpu>/<profile>/lws.yaml` for Kubernetes.

## Predicted figures (ISL/OSL as planned; see each recipe.yaml for the arithmetic)

| GPU | profile | layout | checkpoint | tok/s/user | tok/s/GPU | TTFT ms | recipe |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## Verification

- NVFP4 weights vs source, float32: KL mean {exact['kl_mean']:.3g}, top-1 agreement {exact['top1_agreement']:.4f},
  {len(exact['exact_tensors'])} of {len(exact['exact_tensors']) + len(exact['inexact_tensors'])} expert tensors exact.
- W4A4 emulated (Blackwell's 4-bit activations): KL mean {w4a4['kl_mean']:.3g}, top-1 agreement
  {w4a4['top1_agreement']:.4f}.
"""
    (out / "README.md").write_text(text)
