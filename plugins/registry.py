"""Where the trtkit plugins are registered and whether each registration can be used on this machine.

Nothing here imports torch's op registry, Triton, TensorRT or TensorRT-LLM: availability is read from
installed packages (importlib.util.find_spec) and torch.cuda, so `trtkit plugins list` is cheap and
registers nothing. Each registration happens only when its module is imported:

| target | module to import | registers |
|---|---|---|
| torch | `plugins.ops` | `torch.ops.trtkit.moe`, `torch.ops.trtkit.attention` (reference on CPU, Triton on CUDA; Gluon for nvfp4_frag experts on Hopper) |
| tensorrt_llm | `plugins.trtllm.trtllm_gptoss` (or `--custom_module_dirs plugins/trtllm/trtllm_gptoss`) | `GptOssForCausalLM` with its MoE on `trtkit::moe` (NVFP4, Hopper) |
| tensorrt | `plugins.tensorrt_qdp` | Quickly Deployable Plugins `trtkit::moe`, `trtkit::attention` |
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Registration:
    target: str      # torch | tensorrt_llm | tensorrt
    module: str      # what to import to register
    available: bool  # can it be used on this machine
    detail: str      # what runs, or why it cannot


@dataclass(frozen=True)
class Plugin:
    name: str
    summary: str
    registrations: tuple[Registration, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "summary": self.summary,
                "registrations": [asdict(r) for r in self.registrations]}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


TENSORRT_MIN = (10, 9)  # first release whose tensorrt.plugin has aot_impl and KernelLaunchParams
# releases whose Quickly Deployable Plugins are broken (Torch-TensorRT turns QDP off for 10.14.*: "known bug")
TENSORRT_BROKEN = {(10, 14): "10.14 has a known bug that breaks Quickly Deployable Plugins; use >= 10.15"}


def _release(version: str) -> tuple[int, ...]:
    """'10.13.3.9.post1' -> (10, 13); () when the version does not start with major.minor."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else ()


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import counts as absent
        return False


def _cuda() -> str | None:
    """The first CUDA device's name and capability, or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"{torch.cuda.get_device_name(0)} (sm_{major}{minor})"


def _torch_registration(for_moe: bool = False) -> Registration:
    triton = _version("triton")
    gpu = _cuda()
    gluon = ("; NVFP4 experts in nvfp4_frag storage (TrtkitMoE's default on Hopper) run the Gluon GEMM "
             "(plugins.moe.gluon_frag, checked with Triton 3.6 and compiled with 3.9)"
             if for_moe and triton and gpu and gpu.endswith("(sm_90)") else "")
    kernels = (f"Triton {triton} kernels on {gpu}{gluon}" if triton and gpu else
               "no CUDA device: calls run the reference" if triton else
               "triton not installed: CUDA calls fail (pip install 'trtkit[gpu]'); CPU calls run the reference")
    return Registration("torch", "plugins.ops", True, f"CPU: plain-torch reference; {kernels}")


def _trtllm_registration(for_moe: bool) -> Registration:
    module = "plugins.trtllm.trtllm_gptoss"
    if not for_moe:
        return Registration("tensorrt_llm", module, False,
                            "not needed: TensorRT-LLM's own attention backend runs sinks and the 128-token band")
    version = _version("tensorrt_llm") or _version("tensorrt-llm")
    if not version and not _installed("tensorrt_llm"):
        return Registration("tensorrt_llm", module, False, "tensorrt_llm not installed")
    return Registration("tensorrt_llm", module, True,
                        f"tensorrt_llm {version or '?'}: GptOssForCausalLM, NVFP4 MoE on trtkit::moe on Hopper "
                        "(trtllm-serve --custom_module_dirs plugins/trtllm/trtllm_gptoss)")


def _tensorrt_registration(aot: bool) -> Registration:
    module = "plugins.tensorrt_qdp"
    version = _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13")
    if not version and not _installed("tensorrt"):
        return Registration("tensorrt", module, False, "tensorrt not installed")
    if not _installed("tensorrt.plugin") or () < _release(version or "") < TENSORRT_MIN:
        return Registration("tensorrt", module, False,
                            f"tensorrt {version or '?'} is too old: the plugins need tensorrt.plugin with aot_impl "
                            f"(TensorRT >= {'.'.join(map(str, TENSORRT_MIN))})")
    if _release(version or "") in TENSORRT_BROKEN:
        return Registration("tensorrt", module, False,
                            f"tensorrt {version}: {TENSORRT_BROKEN[_release(version)]}")
    if not _installed("triton"):
        return Registration("tensorrt", module, False, "triton not installed (the plugin kernels are Triton)")
    impl = "ahead-of-time Triton kernel (PTX in the engine)" if aot else "Triton kernels launched from Python"
    return Registration("tensorrt", module, True, f"tensorrt {version or '?'}: {impl}")


def list_plugins() -> list[Plugin]:
    return [
        Plugin("trtkit::moe", "gpt-oss MoE: top-k routing, FP4 (NVFP4/MXFP4) or BF16 experts decoded in the "
               "kernel, BF16 activations, clamped SwiGLU",
               (_torch_registration(for_moe=True), _trtllm_registration(for_moe=True),
                _tensorrt_registration(aot=False))),
        Plugin("trtkit::attention", "gpt-oss attention: learned sinks, optional sliding window, GQA, causal; "
               "prefill (flash) and decode (split-KV) kernels",
               (_torch_registration(), _trtllm_registration(for_moe=False), _tensorrt_registration(aot=True))),
    ]
