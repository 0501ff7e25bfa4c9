"""The MoE GEMM as Triton compiles it for an H100 (sm_90), checked on CPU without a GPU: for gpt-oss-120b
layers stored as `ProjectionTensors.k_major` stores them, every global load of the K loop (FP4 codes,
block scales, activations) is an asynchronous copy that Triton pipelines `num_stages` deep. A load
Triton cannot vectorize to >= 4 bytes a thread stays a plain load issued and waited for in the same K
step, one memory round trip per step, which is what bounded batch-1 decode (BENCHMARKS.md, issue 6).

The launch is captured from the real launcher (`fused_moe` on CPU, the GEMM call recorded instead of
run), then compiled in a child process with the specialization Triton's launcher gives those
arguments (ints equal to 1 become constants, ints and 16-byte-aligned pointers divisible by 16 are
marked so).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from plugins.moe import fused  # noqa: E402
from plugins.moe import triton_kernels as K  # noqa: E402
from plugins.moe.tensors import MoeTensors, ProjectionTensors, WeightFormat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = INTER = 2880  # gpt-oss hidden and intermediate sizes
E = 4         # experts (the compiled code does not depend on it)

# what the launcher passes differently on CUDA than under the interpreter (`fused._gemm`)
CUDA_CONSTEXPRS = {"DOT_DTYPE": "bf16", "PRECISION": "tf32", "ASM": True}

_COMPILE = r"""
import json, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from plugins.moe import triton_kernels as K
launch = json.load(sys.stdin)
DTYPES = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}
fn = K._expert_gemm_kernel
sig, consts, attrs = {}, {}, {}
for i, name in enumerate(fn.arg_names):
    kind, value = launch["args"][name]
    if kind == "constexpr":
        sig[name] = "constexpr"
        consts[name] = DTYPES.get(value, value) if isinstance(value, str) and value != "tf32" else value
    elif kind == "ptr":
        sig[name] = "*" + value[0]
        if value[1]:
            attrs[(i,)] = [["tt.divisibility", 16]]
    elif kind == "float":
        sig[name] = "fp32"
    elif value == 1:
        sig[name], consts[name] = "constexpr", 1
    else:
        sig[name] = "i32"
        if value % 16 == 0:
            attrs[(i,)] = [["tt.divisibility", 16]]
c = triton.compile(triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                   target=GPUTarget("cuda", 90, 32), options=launch["options"])
ir = c.asm["ttgir"]
start = ir.index("scf.for")
loop = ir[start:ir.index("scf.yield", start)]
json.dump({"sync_loads": len(re.findall(r"\btt\.load\b", loop)),
           "async_copies": loop.count("async_copy_global_to_local"), "shared": c.metadata.shared}, sys.stdout)
"""

_DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.uint8: "u8", torch.int32: "i32"}


def _describe(value):
    if isinstance(value, torch.Tensor):
        return ["ptr", [_DTYPES[value.dtype], value.data_ptr() % 16 == 0]]
    if isinstance(value, float):
        return ["float", value]
    return ["int", int(value)]


def _launches(t: MoeTensors, n_tokens: int) -> list[dict]:
    """The two GEMM launches of fused_moe (gate_up, down) with DECODE_CONFIG, as JSON."""
    recorded = []

    class Recorder:
        arg_names = K._expert_gemm_kernel.arg_names

        def __getitem__(self, grid):
            def launch(*args, num_warps, num_stages, **constexprs):
                named = dict(zip(self.arg_names, args, strict=False))
                described = {k: _describe(v) for k, v in named.items()}
                for k, v in constexprs.items():
                    v = CUDA_CONSTEXPRS.get(k, getattr(v, "value", v))  # tl.constexpr -> its value
                    described[k] = ["constexpr", v if isinstance(v, bool | int | str) else str(v)]
                recorded.append({"args": described, "options": {"num_warps": num_warps, "num_stages": num_stages}})
            return launch

    original = K._expert_gemm_kernel
    K._expert_gemm_kernel = Recorder()
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n_tokens, HIDDEN, generator=g).to(torch.bfloat16)
        fused.fused_moe(x, torch.randn(n_tokens, E, generator=g), t, 4, config=fused.DECODE_CONFIG)
    finally:
        K._expert_gemm_kernel = original
    return recorded



def _nvfp4(n_in: int, n_out: int) -> ProjectionTensors:
    """Random codes and scales in the checkpoint's storage ([E, in/2, out] output-fastest)."""
    g = torch.Generator().manual_seed(1)
    packed = torch.randint(0, 256, (E, n_in // 2, n_out), dtype=torch.uint8, generator=g)
    scale = (torch.rand(E, n_in // 16, n_out, generator=g) + 0.5).to(torch.float8_e4m3fn)
    return ProjectionTensors(WeightFormat.NVFP4, packed, scale, torch.tensor(0.02))


def _compile(launch: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-c", _COMPILE], input=json.dumps(launch), capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def layer() -> MoeTensors:
    zeros = torch.zeros
    return MoeTensors(_nvfp4(HIDDEN, 2 * INTER), zeros(E, 2 * INTER, dtype=torch.bfloat16), _nvfp4(INTER, HIDDEN),
                      zeros(E, HIDDEN, dtype=torch.bfloat16)).k_major()


def test_k_major_rows_are_16_byte_aligned(layer):
    for p in (layer.gate_up, layer.down):
        for t in (p.weight, p.scale):  # logical [E, in/x, out]: rows are the output columns
            assert t.stride(1) == 1 and t.stride(2) % 16 == 0 and t.data_ptr() % 16 == 0


@pytest.mark.parametrize("n_tokens", [1, 32])
def test_every_k_loop_load_is_pipelined(layer, n_tokens):
    launches = _launches(layer, n_tokens)
    assert [la["args"]["GATE_UP"][1] for la in launches] == [True, False]
    for la in launches:
        got = _compile(la)
        assert got["sync_loads"] == 0, (la["args"]["GATE_UP"], got)
        assert got["async_copies"] >= 3, got  # codes, scales, activations
