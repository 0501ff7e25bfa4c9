"""The prefill attention kernel compiled ahead of time to PTX, for launchers that are not Triton's
(TensorRT's ahead-of-time plugins, `plugins.tensorrt_qdp`). Needs triton only: the compile runs on any
machine, GPU or not, for a GPU target named by (backend, arch).

Such a launcher passes the kernel exactly (input pointers, int32 scalars, output pointers), as TensorRT's
`aot_impl` contract says. Recent Triton appends hidden pointer parameters to every kernel (global
scratch, then also profile scratch: one or two by release, filled in by Triton's own launcher); a
launcher that does not know them leaves them unset, and the driver reads past the argument array it was
given. When the kernel needs no scratch buffer (sizes 0) those parameters are dead, and
`drop_trailing_params` removes them from the PTX entry so that its parameter list is exactly what the
launcher passes; a kernel that needs scratch is refused. So is a kernel that needs more than 48 KiB of
dynamic shared memory: a launch may use that much only after `cuFuncSetAttribute(
MAX_DYNAMIC_SHARED_SIZE_BYTES)`, which Triton's launcher calls and TensorRT's AOT launcher is not
documented to (gpt-oss, D = 64: 24 KiB on sm_90, 32 KiB on sm_100; D = 128 on sm_100: 64 KiB, refused).

TensorRT hands the PTX to the driver, which compiles it when the engine loads, so its `.version` must be
one the node's driver knows: `driver_ptx_version` reads that from NVML, and the QDP module compiles for
it (Triton would otherwise write the newest version its own ptxas knows, e.g. 9.4 for a CUDA 13.0
driver that reads up to 9.0).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

import triton
import triton.language as tl

from plugins.attention import fused
from plugins.attention import triton_kernels as kernels

PREFILL_INPUTS = ("Q", "K", "V", "Sinks")   # pointer parameters before the scalars
PREFILL_OUTPUTS = ("Out",)                  # pointer parameters after them
DTYPES = {"bf16": tl.bfloat16, "fp16": tl.float16}
SCRATCH = ("global_scratch_size", "profile_scratch_size")
SHARED_NO_OPT_IN = 48 * 1024  # dynamic shared memory a kernel may launch with without an attribute call


@dataclass(frozen=True)
class AotKernel:
    """One compiled kernel as an external launcher needs it."""
    name: str
    ptx: str
    threads: int        # block_x
    shared: int         # dynamic shared memory, bytes
    params: int         # parameters of the PTX entry (pointers and scalars, in launch order)


def prefill_scalars(t, s, q_start, window: int, sm_scale: float, hq: int, hkv: int, head_dim: int) -> tuple:
    """attn_prefill_kernel's int32 arguments in order, for dense q/out [B, T, Hq, D] and k/v [B, S, Hkv, D]:
    T, S, q_start, window (0: none), the bits of float32 sm_scale, then the (batch, token, head) strides
    of q, k, v, out. `t` and `s` may be symbolic (anything with `*`), the rest are ints."""
    q_strides = (t * (hq * head_dim), hq * head_dim, head_dim)
    kv_strides = (s * (hkv * head_dim), hkv * head_dim, head_dim)
    return (t, s, q_start, window, fused.f32_bits(sm_scale), *q_strides, *kv_strides, *kv_strides, *q_strides)


def prefill_params() -> int:
    """How many parameters the launcher passes: the pointers and the scalars of `prefill_scalars`."""
    return len(PREFILL_INPUTS) + len(prefill_scalars(1, 1, 0, 0, 1.0, 1, 1, 1)) + len(PREFILL_OUTPUTS)


def ptx_for_driver(cuda_driver_version: int, arch: int) -> int:
    """The PTX ISA version (87 = 8.7) to write for a driver of NVML's CUDA version (13000 = 13.0): the
    newest both the driver and Triton's ptxas for `arch` read (Triton's own version table)."""
    from triton.backends.nvidia import compiler
    major, minor = cuda_driver_version // 1000, cuda_driver_version % 1000 // 10
    driver = compiler.ptx_get_version(f"{major}.{minor}")
    if not hasattr(compiler, "get_ptxas"):  # older Triton: no ptxas tool object
        return driver
    # Triton 3.6+ picks a ptxas per arch (`get_ptxas(arch)`); 3.5 has one (`get_ptxas()`)
    ptxas = compiler.get_ptxas(arch) if inspect.signature(compiler.get_ptxas).parameters else compiler.get_ptxas()
    return min(driver, compiler.ptx_get_version(ptxas.version))


def driver_ptx_version(arch: int) -> int:
    """`ptx_for_driver` for this node's driver (NVML)."""
    import pynvml
    pynvml.nvmlInit()
    try:
        version = pynvml.nvmlSystemGetCudaDriverVersion_v2()
    finally:
        pynvml.nvmlShutdown()
    return ptx_for_driver(version, arch)


def compile_prefill(dtype: str, hq: int, hkv: int, head_dim: int, has_window: bool,
                    target: tuple[str, int] | None = None, ptx_version: int | None = None) -> AotKernel:
    """attn_prefill_kernel for one (dtype, heads, head_dim, window?) with `fused.PREFILL_CONFIG`, as PTX
    whose entry takes exactly `prefill_params()` parameters. target: ("cuda", 90) etc.; None: the GPU
    of this process. ptx_version: e.g. 87 for `.version 8.7`; None: Triton's default."""
    if dtype not in DTYPES:
        raise ValueError(f"trtkit::attention AOT: dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}")
    if hq % hkv:
        raise ValueError(f"trtkit::attention AOT: {hq} query heads are not a multiple of {hkv} KV heads")
    cfg = fused.PREFILL_CONFIG
    fn = kernels.attn_prefill_kernel
    consts = {"HQ": hq, "GROUP": hq // hkv, "HEAD_DIM": head_dim, "HAS_WINDOW": has_window,
              "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "DOT_DTYPE": DTYPES[dtype], "PRECISION": "tf32"}
    pointers = {a: "*fp32" if a == "Sinks" else f"*{dtype}" for a in PREFILL_INPUTS + PREFILL_OUTPUTS}
    signature = {a: "constexpr" if a in consts else pointers.get(a, "i32") for a in fn.arg_names}
    gpu = None
    if target is not None:
        from triton.backends.compiler import GPUTarget
        gpu = GPUTarget(target[0], target[1], 32)
    compiled = triton.compile(triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=consts),
                              target=gpu, options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                                       "ptx_version": ptx_version})
    meta = compiled.metadata
    needs = {k: getattr(meta, k, 0) for k in SCRATCH if getattr(meta, k, 0)}
    if needs:
        raise ValueError(f"trtkit::attention AOT: kernel {meta.name} needs Triton scratch memory {needs}, "
                         "which an external launcher does not provide")
    if meta.shared > SHARED_NO_OPT_IN:
        raise ValueError(f"trtkit::attention AOT: head_dim {head_dim} on {target or 'this GPU'} needs "
                         f"{meta.shared} bytes of shared memory, above the {SHARED_NO_OPT_IN} a launch gets "
                         "without an opt-in TensorRT's AOT launcher is not documented to make; build the "
                         "engine without aot=True (the just-in-time implementation runs it)")
    ptx = drop_trailing_params(compiled.asm["ptx"], meta.name, prefill_params())
    return AotKernel(meta.name, ptx, meta.num_warps * 32, meta.shared, prefill_params())


def _entry(ptx: str, name: str) -> re.Match:
    """Kernel `name`'s `.entry` header; group 1 is its parameter list."""
    m = re.search(rf"\.entry\s+{re.escape(name)}\s*\((.*?)\)", ptx, re.S)
    if m is None:
        raise ValueError(f"PTX has no .entry {name}")
    return m


def entry_params(ptx: str, name: str) -> list[str]:
    """The parameter declarations of kernel `name`'s `.entry`, in order."""
    return [p.strip() for p in _entry(ptx, name).group(1).split(",") if p.strip()]


def drop_trailing_params(ptx: str, name: str, keep: int) -> str:
    """`ptx` with kernel `name`'s parameters after the first `keep` removed from its entry; refused when
    fewer than `keep` are declared or a removed one is read anywhere in the PTX."""
    params = entry_params(ptx, name)
    if len(params) < keep:
        raise ValueError(f"PTX entry {name} has {len(params)} parameters, the launcher passes {keep}")
    for p in params[keep:]:
        ident = p.split()[-1]
        if len(re.findall(rf"\b{re.escape(ident)}\b", ptx)) > 1:
            raise ValueError(f"PTX entry {name}: parameter {ident} after the launcher's {keep} is used")
    m = _entry(ptx, name)
    body = ",\n".join(f"\t{p}" for p in params[:keep])
    return ptx[:m.start(1)] + "\n" + body + "\n" + ptx[m.end(1):]
