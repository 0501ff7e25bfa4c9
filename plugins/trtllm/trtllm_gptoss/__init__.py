"""Opt-in TensorRT-LLM out-of-tree model: gpt-oss (`GptOssForCausalLM`) whose MoE runs on `trtkit::moe`
when an NVFP4 checkpoint is served on Hopper (sm_90), where TensorRT-LLM has no NVFP4 MoE path.
Everything else (attention with sinks, KV cache, scheduling, CUDA graphs) is TensorRT-LLM's own.

Importing this package registers the model, which is how TensorRT-LLM loads out-of-tree models:

    PYTHONPATH=<trtkit>:<trtkit>/plugins/trtllm \
        trtllm-serve <nvfp4-checkpoint> --custom_module_dirs <trtkit>/plugins/trtllm/trtllm_gptoss

or `import plugins.trtllm.trtllm_gptoss` before `tensorrt_llm.LLM(...)`. On other GPUs or other
quantization the registered class behaves exactly as TensorRT-LLM's own. TensorRT-LLM imports the folder
as the top-level package `trtllm_gptoss` (its parent on sys.path; `plugins/trtllm/` holds nothing else),
so trtkit itself must be importable in the serving environment, and processes that build the model
without seeing `--custom_module_dirs` (`trtllm-llmapi-launch`'s leader, Dynamo workers) need both
PYTHONPATH entries (`plugins.trtllm` lists them and says why; the Hopper NVFP4 recipes set them).
Registering replaces TensorRT-LLM's own `GptOssForCausalLM` entry (the last registration wins; workers
receive the server's registry).
Recent TensorRT-LLM versions have a W4A16 NVFP4 MoE for SM89-99 (Marlin) but it refuses gpt-oss's
SwiGLU (`swiglu_gptoss_style`), so gpt-oss still needs this module on Hopper. Needs tensorrt_llm and
triton; exercised on GPU nodes only (CI machines cannot install TensorRT-LLM). The MoE module itself
(`plugins.moe_layer.TrtkitMoE`) needs neither and is tested on CPU against real checkpoints.
"""

from plugins.moe_layer import TrtkitMoE

from .modeling import TrtkitGptOssForCausalLM

__all__ = ["TrtkitGptOssForCausalLM", "TrtkitMoE"]
