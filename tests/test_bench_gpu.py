"""bench/bench_gpu.py runs only on a lent GPU, where a mistake costs the device time of a whole run: its
MoE correctness check runs here on CPU (Triton's interpreter) over every storage, with the default config
and one of the spread-only configs, so the check's own code and a config it times are exercised."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BF16_REL_L2_INTERPRETER = 2e-2  # the interpreter truncates float32 -> bf16 (see tests/test_kernels_moe.py)


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_moe_check_runs_on_cpu(bench_gpu, monkeypatch):
    monkeypatch.setattr(bench_gpu, "DEV", torch.device("cpu"))
    rows = bench_gpu.check_moe(torch.Generator().manual_seed(0), tokens=(3,),
                               configs=(None, bench_gpu.moe_fused.DECODE_CONFIG),
                               spread_configs=bench_gpu.SPREAD_EXTRA_CONFIGS[:1], layer=(4, 128, 128))
    assert {r["case"].split()[0] for r in rows} == {"nvfp4", "nvfp4-spread", "nvfp4-nmajor", "mxfp4", "bf16"}
    assert len(rows) == 5 * 3 + 1, rows     # every storage in bf16 and fp32 (default), bf16 (decode), + the extra
    for r in rows:
        tol = BF16_REL_L2_INTERPRETER if "bfloat16" in r["case"] else r["tol"]
        assert r["rel_err"] <= tol, r
    spread_bf16 = [r for r in rows if r["case"].startswith("nvfp4-spread") and "bfloat16" in r["case"]]
    # a twin for swap_ab configs only (the interpreter's default has none): see check_moe
    assert [r["bit_equal"] for r in spread_bf16] == [None, True, True], spread_bf16


def test_without_a_gpu_it_says_so():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--only", "moe"],
                         capture_output=True, text=True, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert run.returncode != 0 and "needs a CUDA GPU" in run.stderr, run.stderr


@pytest.mark.parametrize("step", [64, 32])
def test_access_kernel_reads_every_byte_once_in_both_layouts(bench_gpu, step):
    """bench_access's two layouts read the same bytes (each once): the stored sums equal the buffer's."""
    e, n, row_bytes, rows = 2, 128, 192, 64
    w = torch.randint(0, 256, (e * n * row_bytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(step))
    for s_c, s_r in ((step, row_bytes), (rows * step, step)):                # rows as stored, tile-contiguous
        out = torch.zeros(e * (n // rows), dtype=torch.int32)
        bench_gpu._stream_kernel[(e, n // rows)](w, out, row_bytes // step, n * row_bytes, rows * row_bytes, s_c, s_r,
                                                 ROWS=rows, BYTES=step)
        assert int(out.sum()) == int(w.long().sum())


def test_parts_kernel_runs_every_part(bench_gpu, monkeypatch):
    """bench_parts' kernel on a small spread layer (2 chunks, 2 row tiles): with activation tiles, decode and
    the dots, the hand-written step gives what `_spread_step` gives (same loads, same decode, same dots; the
    accumulator's power of two aside), and every other part runs to a finite sum."""
    monkeypatch.setattr(bench_gpu, "DEV", torch.device("cpu"))
    t = bench_gpu.random_layer(2, 256, 64, "nvfp4-spread", torch.Generator().manual_seed(0)).gate_up
    e, k, n = t.num_experts, t.in_features, t.out_features
    w, s = t.weight, t.scale.view(torch.uint8)
    x = torch.randn(16, k).to(torch.bfloat16)
    sums = {}
    for name, (act, decode, whole) in bench_gpu.PARTS.items():
        out = torch.empty(e * (n // 64), dtype=torch.float32)
        bench_gpu._parts_kernel[(e, n // 64)](w, s, x, out, k, n, w.stride(0), s.stride(0), x.stride(0), 1.5, 2,
                                              ACT=act, DECODE=decode, WHOLE=whole, ASM=False)
        assert bool(torch.isfinite(out).all()), name
        sums[name] = out
    torch.testing.assert_close(sums["+ activation tiles + decode"], sums["_spread_step (the GEMM's K step)"])


def test_module_check_runs_on_cpu(bench_gpu, monkeypatch):
    """check_module builds TrtkitMoE as TensorRT-LLM does and compares it with the reference over the same
    checkpoint tensors; on CPU the storage it picks is spread (no Gluon kernel here), and the op's reference."""
    monkeypatch.setattr(bench_gpu, "DEV", torch.device("cpu"))
    rows = bench_gpu.check_module(torch.Generator().manual_seed(0), layer=(4, 128, 128), tokens=(3,))
    assert [r["case"] for r in rows] == ["storage nvfp4_spread N=3 4x128x128"], rows
    assert all(r["ok"] for r in rows), rows
