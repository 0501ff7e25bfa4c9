"""`trtkit build --smoke`: load the bundle's checkpoint through TensorRT-LLM's LLM API and generate a
few tokens. Runs only where `tensorrt_llm` is importable and a GPU is present; elsewhere it is skipped
with a message (recorded in the manifest either way)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PROMPT = "The capital of France is"


def smoke_test(checkpoint: Path, max_tokens: int = 8) -> dict:
    if importlib.util.find_spec("tensorrt_llm") is None:
        return {"ran": False, "reason": "tensorrt_llm is not installed here (pip install 'trtkit[gpu]' on a GPU node)"}
    import torch

    if not torch.cuda.is_available():
        return {"ran": False, "reason": "no CUDA GPU visible"}
    from tensorrt_llm import LLM, SamplingParams  # documented LLM API

    llm = LLM(model=str(checkpoint))
    outputs = llm.generate([PROMPT], SamplingParams(max_tokens=max_tokens, temperature=0.0))
    text = outputs[0].outputs[0].text
    return {"ran": True, "prompt": PROMPT, "output": text, "tokens": max_tokens}
