"""FP4 codecs: E2M1 elements, MXFP4 (what gpt-oss ships), NVFP4 (what TensorRT-LLM loads on Blackwell)."""
