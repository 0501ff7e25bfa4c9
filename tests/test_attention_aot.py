"""The prefill kernel compiled ahead of time for TensorRT's `aot_impl` (plugins.attention.aot), on CPU:
Triton compiles for sm_90 and sm_100 without a GPU, and its bundled ptxas assembles the result.

TensorRT launches the PTX entry with exactly (input pointers, `extra_args` int32 scalars, output
pointers). Checked here: the entry declares that many parameters of those kinds in that order (Triton's
hidden scratch parameters are gone), the trimmed PTX still assembles, the scalars are the ones the JIT
launcher passes, and the trimming refuses what it cannot do safely.
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

from plugins.attention import aot, fused  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Compiled in a child process: the kernel tests of this session run Triton's interpreter, under which
# @triton.jit functions cannot be compiled.
_COMPILE = """
import json, os, sys, tempfile, subprocess
from plugins.attention import aot
def ptxas(arch):  # the ptxas Triton itself compiles with for this arch
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except ImportError:
        import triton.backends.nvidia as nv
        return os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas")
out = []
for arch, dtype, window, ptx in ((90, "bf16", True, None), (100, "fp16", False, None), (90, "bf16", False, 87)):
    k = aot.compile_prefill(dtype, 64, 8, 64, window, target=("cuda", arch), ptx_version=ptx)
    with tempfile.TemporaryDirectory() as d:
        open(f"{d}/k.ptx", "w").write(k.ptx)
        r = subprocess.run([ptxas(arch), f"-arch=sm_{arch}a", f"{d}/k.ptx", "-o", f"{d}/k.cubin"],
                           capture_output=True, text=True)
    out.append({"arch": arch, "name": k.name, "params": aot.entry_params(k.ptx, k.name), "declared": k.params,
                "threads": k.threads, "shared": k.shared, "ptx": ptx,
                "version": next(l for l in k.ptx.splitlines() if l.startswith(".version")), "ptxas_rc": r.returncode, "ptxas_err": r.stderr})
try:  # head_dim 128 on sm_100: ~64 KiB of shared memory, more than a launch gets without an opt-in
    aot.compile_prefill("bf16", 64, 8, 128, False, target=("cuda", 100))
    refused = None
except ValueError as e:
    refused = str(e)
json.dump({"kernels": out, "refused": refused}, sys.stdout)
"""


@pytest.fixture(scope="module")
def compiled_all() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def compiled(compiled_all) -> list[dict]:
    return compiled_all["kernels"]


def test_entry_takes_exactly_what_tensorrt_passes(compiled):
    n_in, n_out = len(aot.PREFILL_INPUTS), len(aot.PREFILL_OUTPUTS)
    n_scalars = aot.prefill_params() - n_in - n_out
    assert n_scalars == 17
    for k in compiled:
        params = k["params"]
        assert len(params) == k["declared"] == aot.prefill_params(), (k["arch"], params)
        kinds = [".u64" if ".u64" in p else ".u32" if ".u32" in p else p for p in params]
        assert kinds == [".u64"] * n_in + [".u32"] * n_scalars + [".u64"] * n_out, (k["arch"], params)
        assert k["threads"] == fused.PREFILL_CONFIG.num_warps * 32
        assert 0 < k["shared"] <= 48 * 1024  # no opt-in for more than 48 KiB needed at launch


def test_more_shared_memory_than_a_plain_launch_gets_is_refused(compiled_all):
    """TensorRT's AOT launcher is not documented to raise the 48 KiB dynamic shared memory limit."""
    refused = compiled_all["refused"]
    assert refused is not None and "head_dim 128" in refused and "shared memory" in refused
    assert "without aot=True" in refused


def test_trimmed_ptx_assembles(compiled):
    for k in compiled:
        assert k["ptxas_rc"] == 0, (k["arch"], k["ptxas_err"])


def test_ptx_version_is_the_drivers(compiled):
    """A CUDA 12.8 driver JIT-compiles PTX up to ISA 8.7: asked for it, the kernel says `.version 8.7`."""
    pinned = [k for k in compiled if k["ptx"] == 87]
    assert pinned and pinned[0]["version"] == ".version 8.7"


@pytest.mark.parametrize("driver,expected", [(12080, 87), (12040, 84), (12060, 85), (13000, 90)])
def test_ptx_for_driver(driver, expected):
    assert aot.ptx_for_driver(driver, 90) == expected


@pytest.mark.parametrize("takes_arch", [True, False])
def test_ptx_for_driver_with_either_tritons_ptxas_lookup(monkeypatch, takes_arch):
    """Triton 3.6+ has `get_ptxas(arch)`; 3.5 (torch 2.9's, as TensorRT-LLM 1.2 installs it) `get_ptxas()`:
    both work (3.5's raised a TypeError in driver_ptx_version)."""
    from types import SimpleNamespace

    from triton.backends.nvidia import compiler

    tool = SimpleNamespace(version="12.8")  # a ptxas of CUDA 12.8: PTX ISA 8.7
    monkeypatch.setattr(compiler, "get_ptxas", (lambda arch: tool) if takes_arch else (lambda: tool))
    assert aot.ptx_for_driver(13000, 90) == 87 and aot.ptx_for_driver(12040, 90) == 84


def test_ptx_for_driver_is_capped_by_tritons_ptxas():
    """A driver from the far future (CUDA 99.0, PTX 95.0 by the table) gets what Triton's ptxas writes."""
    assert 90 <= aot.ptx_for_driver(99000, 90) < 100


@pytest.mark.parametrize("window,q_start", [(0, 0), (128, 7)])
def test_scalars_match_the_jit_launcher(window, q_start):
    b, t, s, hq, hkv, d = 2, 5, 12, 8, 2, 16
    q, out = torch.empty(b, t, hq, d), torch.empty(b, t, hq, d)
    k, v = torch.empty(b, s, hkv, d), torch.empty(b, s, hkv, d)
    jit = (t, s, q_start, window, fused.f32_bits(0.125), *fused._strides(q, k, v, out))
    assert aot.prefill_scalars(t, s, q_start, window, 0.125, hq, hkv, d) == jit


PTX = """.visible .entry kern(
\t.param .u64 .ptr .global .align 1 kern_param_0,
\t.param .u32 kern_param_1,
\t.param .u64 .ptr .global .align 1 kern_param_2,
\t.param .u64 .ptr .global .align 1 kern_param_3
)
{
\tld.param.u64 %rd1, [kern_param_0];
\tld.param.u32 %r1, [kern_param_1];
\tLAST
}
"""


def test_drop_trailing_params():
    ptx = PTX.replace("LAST", "ret;")
    trimmed = aot.drop_trailing_params(ptx, "kern", 2)
    assert [p.split()[-1] for p in aot.entry_params(trimmed, "kern")] == ["kern_param_0", "kern_param_1"]
    assert trimmed.endswith(ptx[ptx.index(")"):])
    assert aot.drop_trailing_params(ptx, "kern", 4).count("kern_param_3") == 1


def test_drop_trailing_params_refuses():
    used = PTX.replace("LAST", "ld.param.u64 %rd2, [kern_param_3];")
    with pytest.raises(ValueError, match="kern_param_3 after the launcher's 3 is used"):
        aot.drop_trailing_params(used, "kern", 3)
    with pytest.raises(ValueError, match="has 4 parameters, the launcher passes 5"):
        aot.drop_trailing_params(PTX, "kern", 5)
    with pytest.raises(ValueError, match="no .entry other"):
        aot.drop_trailing_params(PTX, "other", 1)


def test_compile_refuses_bad_requests():
    with pytest.raises(ValueError, match="dtype 'fp32' is not supported"):
        aot.compile_prefill("fp32", 64, 8, 64, True, target=("cuda", 90))
    with pytest.raises(ValueError, match="6 query heads are not a multiple of 4"):
        aot.compile_prefill("bf16", 6, 4, 64, True, target=("cuda", 90))
