"""Opt-in TensorRT-LLM out-of-tree model: gpt-oss (`GptOssForCausalLM`) whose MoE runs on `trtkit::moe`
when an NVFP4 checkpoint is served on Hopper (sm_90), where TensorRT-LLM has no NVFP4 MoE path.
Everything else (attention with sinks, KV cache, scheduling, CUDA graphs) is TensorRT-LLM's own.

Importing this package registers the model, which is how TensorRT-LLM loads out-of-tree models:

    trtllm-serve <nvfp4-checkpoint> --custom_module_dirs <trtkit>/plugins/trtllm_gptoss

or `import plugins.trtllm_gptoss` before `tensorrt_llm.LLM(...)`. On other GPUs or other quantization
the registered class behaves exactly as TensorRT-LLM's own. Needs tensorrt_llm and triton; exercised on
GPU nodes only (CI machines cannot install TensorRT-LLM).
"""

from .modeling import TrtkitGptOssForCausalLM, TrtkitMoE

__all__ = ["TrtkitGptOssForCausalLM", "TrtkitMoE"]
