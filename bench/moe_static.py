"""The MoE GEMMs as Triton compiles them for an H100 (sm_90), on any machine, no GPU needed: the K-loop
of each kernel as SASS, per decoded 4-bit weight. A static companion to `make bench-gpu`, which times
them: it shows what a change did to the instruction stream before a GPU is at hand.

Each launch is captured from the real launcher (`plugins.moe.fused.fused_moe` run on CPU under Triton's
interpreter with the GEMM call recorded instead of run; gpt-oss layers stored as `MoeTensors.k_major`
stores them), then compiled in a child process (no interpreter) with the specialization Triton's own
launcher gives those arguments: ints equal to 1 become constants, ints divisible by 16 and 16-byte
aligned pointers are marked divisible by 16. The CUDA-only choices of the launcher (bf16 dot, PTX
decode) are applied as `fused._gemm` applies them on a GPU.

Per kernel: registers, shared memory, and in the K loop: instructions, instructions per weight,
plain (synchronous) global loads left in the loop by Triton (each one a memory round trip per K step),
asynchronous copies (pipelined), shared-memory traffic and barriers (layout shuffles), tensor-core ops.

    python bench/moe_static.py [--batch 1 32 128] [--config auto|decode|decode-spread-1|decode-spread|wide|prefill] [--spread]
                               [--json] [--sass DIR]

`compile_frag` does the same for the Gluon GEMM on nvfp4_frag storage (`plugins.moe.gluon_frag`; tests/test_gluon_frag.py).
"""

from __future__ import annotations

import os
import sys

if not {"--compile", "--compile-frag"} & set(sys.argv):  # the capture runs the routing kernels on CPU; the
    os.environ.setdefault("TRITON_INTERPRET", "1")                # compiling child must not

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from plugins.moe import fused  # noqa: E402
from plugins.moe import triton_kernels as K  # noqa: E402
from plugins.moe.tensors import MoeTensors, ProjectionTensors, WeightFormat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = INTER = 2880   # gpt-oss
EXPERTS = 4             # the compiled code does not depend on it
TOP_K = 4
CONFIGS = {"decode": fused.DECODE_CONFIG, "decode-spread-1": fused.SPREAD_DECODE_CONFIGS[0][1],
           "decode-spread": fused.SPREAD_DECODE_CONFIGS[1][1],
           "wide": fused.DECODE_WIDE_CONFIG, "prefill": fused.PREFILL_CONFIG,
           "decode-n128": dataclasses.replace(fused.DECODE_CONFIG, block_n=128)}  # bench_gpu's spread extras
CUDA_CONSTEXPRS = {"DOT_DTYPE": "bf16", "PRECISION": "tf32", "ASM": True}  # what `fused._gemm` passes on CUDA
_PTR = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.uint8: "u8",
        torch.int32: "i32"}


def nvfp4_layer(seed: int = 0, spread: bool = False) -> MoeTensors:
    """A gpt-oss-shaped NVFP4 layer (random codes) in the checkpoint's storage, then `k_major(spread)`."""
    g = torch.Generator().manual_seed(seed)

    def proj(n_in: int, n_out: int) -> ProjectionTensors:
        packed = torch.randint(0, 256, (EXPERTS, n_in // 2, n_out), dtype=torch.uint8, generator=g)
        scale = (torch.rand(EXPERTS, n_in // 16, n_out, generator=g) + 0.5).to(torch.float8_e4m3fn)
        return ProjectionTensors(WeightFormat.NVFP4, packed, scale, torch.tensor(0.02))

    zeros = torch.zeros
    return MoeTensors(proj(HIDDEN, 2 * INTER), zeros(EXPERTS, 2 * INTER, dtype=torch.bfloat16),
                      proj(INTER, HIDDEN), zeros(EXPERTS, HIDDEN, dtype=torch.bfloat16)).k_major(spread)


def _describe(value) -> list:
    if isinstance(value, torch.Tensor):
        return ["ptr", [_PTR[value.dtype], value.data_ptr() % 16 == 0]]
    if isinstance(value, float):
        return ["float", value]
    return ["int", int(value)]


def capture(t: MoeTensors, n_tokens: int, config: fused.MoeConfig) -> list[dict]:
    """The GEMM launches (gate_up, then down) `fused_moe` makes for n_tokens tokens, as JSON-able dicts."""
    if type(K._expert_gemm_kernel).__name__ != "InterpretedFunction":
        raise RuntimeError("moe_static.capture needs TRITON_INTERPRET=1 set before plugins.moe is imported")
    recorded = []
    arg_names = K._expert_gemm_kernel.arg_names

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, num_warps, num_stages, **constexprs):
                named = dict(zip(arg_names, args, strict=False))
                described = {k: _describe(v) for k, v in named.items()}
                for k, v in constexprs.items():
                    v = CUDA_CONSTEXPRS.get(k, getattr(v, "value", v))  # tl.constexpr -> its value
                    described[k] = ["constexpr", v if isinstance(v, bool | int | str) else str(v)]
                recorded.append({"args": described, "grid": list(grid),
                                 "options": {"num_warps": num_warps, "num_stages": num_stages}})
            return launch

    original, K._expert_gemm_kernel = K._expert_gemm_kernel, Recorder()
    try:
        g = torch.Generator().manual_seed(n_tokens)
        x = torch.randn(n_tokens, HIDDEN, generator=g).to(torch.bfloat16)
        with warnings.catch_warnings():  # the combine then runs on the GEMMs' unwritten buffers
            warnings.simplefilter("ignore", RuntimeWarning)
            fused.fused_moe(x, torch.randn(n_tokens, EXPERTS, generator=g), t, TOP_K, config=config)
    finally:
        K._expert_gemm_kernel = original
    return recorded


def _in_child(flag: str, request: dict, what: str, child_path: str | None = None) -> dict:
    """Run this script with `flag` in a child process without Triton's interpreter (request as JSON on stdin,
    the child's JSON answer back). child_path: a folder holding another Triton to compile with."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [child_path, env.get("PYTHONPATH"), str(ROOT)]))
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), flag], input=json.dumps(request),
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if r.returncode:
        raise RuntimeError(f"compiling {what} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


def compile_launch(launch: dict, child_path: str | None = None) -> dict:
    """Compile one captured launch for sm_90 in a child process; its K-loop statistics. child_path: a folder
    holding another Triton (pip install --target DIR triton==X) to compile with."""
    return _in_child("--compile", launch, "the captured MoE launch", child_path)


# ---- child process: compile and inspect ------------------------------------------------------------
def _compile_child() -> None:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    launch = json.load(sys.stdin)
    dtypes = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}
    fn = K._expert_gemm_kernel
    sig, consts, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        kind, value = launch["args"][name]
        if kind == "constexpr":
            sig[name], consts[name] = "constexpr", dtypes.get(value, value) if isinstance(value, str) else value
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
    loop_ir = ir[start:ir.index("scf.yield", start)]
    lines = _loop_lines(_sass(c.asm["cubin"]))
    json.dump({"asm_run": _asm_run(ir),
               "regs": getattr(c.metadata, "n_regs", None) or _regs(c.asm["cubin"]),
               "shared_bytes": c.metadata.shared,
               "loop_sync_loads": len(re.findall(r"\btt\.load\b", loop_ir)),
               "loop_async_copies": loop_ir.count("async_copy_global_to_local"),
               "loop_sass": _loop_ops(lines), "loop_sass_lines": lines}, sys.stdout)


def compile_frag(gate_up: bool, block_m: int, stages: int = 4) -> dict:
    """The Gluon GEMM on nvfp4_frag storage (`plugins.moe.gluon_frag`) compiled for sm_90 in a child process,
    as `fused._frag_gemm` launches it on gpt-oss shapes: {"regs", "shared_bytes", "loop_sass" (opcode counts),
    "loop_instructions"}. Compiling checks every layout conversion it asserts trivial (no data movement)."""
    return _in_child("--compile-frag", {"gate_up": gate_up, "block_m": block_m, "stages": stages},
                     "the Gluon MoE GEMM")


def _compile_frag_child() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental import gluon

    from plugins.moe import gluon_frag

    req = json.load(sys.stdin)
    fn = gluon_frag.frag_gemm_kernel
    ints = ("NK", "K", "N", "k_split", "stride_am", "stride_we", "stride_se", "stride_be", "stride_om", "stride_os")
    ptrs = {"a_ptr": "*bf16", "w_ptr": "*u8", "s_ptr": "*u8", "gs_ptr": "*fp32", "bias_ptr": "*bf16",
            "out_ptr": "*bf16" if req["gate_up"] else "*fp32", "sorted_ptr": "*i32", "block_expert_ptr": "*i32",
            "total_ptr": "*i32"}
    consts = dict(gluon_frag.launch_constexprs(req["block_m"], req["stages"]), GATE_UP=req["gate_up"],
                  SWIGLU=req["gate_up"], TOP_K=TOP_K)
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "i32" if n in ints else "fp32") for n in fn.arg_names}
    # what Triton's launcher marks on gpt-oss launches: aligned pointers, sizes and strides divisible by 16
    aligned = set(ptrs) | {"K", "N", "k_split", "stride_am", "stride_we", "stride_se", "stride_be", "stride_om"}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if n in aligned}
    c = triton.compile(gluon._runtime.GluonASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": gluon_frag.WARPS})
    lines = _loop_lines(_sass(c.asm["cubin"]))
    json.dump({"regs": getattr(c.metadata, "n_regs", None) or _regs(c.asm["cubin"]), "shared_bytes": c.metadata.shared,
               "loop_sass": _loop_ops(lines), "loop_instructions": len(lines)}, sys.stdout)


def _asm_run(ttgir: str) -> int | None:
    """The fewest consecutive elements one thread holds along the last axis of any inline-asm decode's
    operands (their layouts' sizePerThread): the spread decode reads 4 consecutive code bytes as one stored
    group, so it needs this to be a multiple of 4. None when the kernel has no inline asm."""
    layouts = dict(re.findall(r"^(#\w+) = #ttg\.blocked<\{sizePerThread = \[([\d, ]+)\]", ttgir, re.M))
    runs = [int(layouts[name].split(",")[-1])
            for line in ttgir.splitlines() if "tt.elementwise_inline_asm" in line
            for name in re.findall(r"tensor<[^>]*, (#\w+)>", line.split(" -> ")[0]) if name in layouts]
    return min(runs) if runs else None


def _tool(name: str) -> str:
    import triton.backends.nvidia as nv
    return str(Path(nv.__file__).parent / "bin" / name)


def _sass(cubin: bytes) -> str:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        return subprocess.run([_tool("cuobjdump"), "-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout


def _regs(cubin: bytes) -> int | None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([_tool("cuobjdump"), "-res-usage", str(path)], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)", out)
    return int(m.group(1)) if m else None


def _loop_lines(sass: str) -> list[str]:
    """The SASS of the body of the innermost backward branch (the K loop), one instruction a line."""
    ins = [(int(a, 16), txt.strip()) for a, txt in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for addr, txt in ins:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", txt)
        if m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    if not loops:
        return []
    lo, hi = max(loops, key=lambda span: span[1] - span[0])
    return [txt for addr, txt in ins if lo <= addr <= hi]


def _loop_ops(lines: list[str]) -> dict[str, int]:
    """Opcode counts of the K loop's SASS lines (`_loop_lines`), predicates dropped."""
    ops: dict[str, int] = {}
    for txt in lines:
        op = re.sub(r"^@!?U?P\w+\s+", "", txt).split()[0]
        ops[op] = ops.get(op, 0) + 1
    return ops


# ---- report ---------------------------------------------------------------------------------------
def summarize(launch: dict, stats: dict) -> dict:
    args = launch["args"]
    weights_per_thread = (args["BLOCK_N"][1] * args["BLOCK_K"][1]) / (launch["options"]["num_warps"] * 32)
    ops = stats["loop_sass"]
    total = sum(ops.values())

    def count(*prefixes: str) -> int:
        return sum(n for op, n in ops.items() if op.startswith(prefixes))

    return {"kernel": "gate_up" if args["GATE_UP"][1] else "down", "asm_run": stats["asm_run"], "regs": stats["regs"],
            "shared_kib": round(stats["shared_bytes"] / 1024, 1), "loop_instructions": total,
            "per_weight": round(total / weights_per_thread, 2),
            "sync_loads_in_loop": stats["loop_sync_loads"], "async_copies_in_loop": stats["loop_async_copies"],
            "ldg_in_loop": count("LDG."), "cp_async_in_loop": count("LDGSTS"),
            "smem_shuffles_in_loop": count("STS", "LDSM", "LDS"), "barriers_in_loop": count("BAR"),
            "tensor_core_ops": count("HGMMA", "HMMA")}


def main() -> None:
    if "--compile" in sys.argv:
        _compile_child()
        return
    if "--compile-frag" in sys.argv:
        _compile_frag_child()
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--config", choices=["auto", *sorted(CONFIGS)], default="auto",
                    help="auto: what fused_moe picks on a GPU for gpt-oss-120b (128 experts) at that batch")
    ap.add_argument("--spread", action="store_true", help="codes stored as k_major(spread=True) stores them")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sass", type=Path, default=None, metavar="DIR",
                    help="also write each kernel's K-loop SASS to DIR/<batch>-<config>-<kernel>.sass")
    ap.add_argument("--child-path", default=None,
                    help="compile with the Triton installed in this folder (pip install --target DIR triton==X), "
                         "e.g. the version a GPU node or TensorRT-LLM's container has; the capture stays on this one")
    args = ap.parse_args()
    layer = nvfp4_layer(spread=args.spread)
    rows = []
    for n in args.batch:
        config = CONFIGS.get(args.config) or fused.default_config(n * TOP_K, 128, torch.device("cuda"), args.spread)
        name = next(k for k, v in CONFIGS.items() if v == config)
        for launch in capture(layer, n, config):
            stats = compile_launch(launch, args.child_path)
            rows.append({"batch": n, "config": name, "storage": "spread" if args.spread else "nvfp4",
                         **summarize(launch, stats)})
            if args.sass:
                args.sass.mkdir(parents=True, exist_ok=True)
                (args.sass / f"{n}-{name}-{rows[-1]['kernel']}.sass").write_text("\n".join(stats["loop_sass_lines"]) + "\n")
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    keys = list(rows[0])
    print(" ".join(f"{k:>12s}" for k in keys))
    for r in rows:
        print(" ".join(f"{str(r[k]):>12s}" for k in keys))


if __name__ == "__main__":
    main()
