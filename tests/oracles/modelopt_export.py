"""NVIDIA Model Optimizer's own NVFP4 export of a tiny gpt-oss, run on CPU, as a test oracle.

Three helpers:

* :func:`make_tiny_bf16_gptoss` writes a small random ``GptOssForCausalLM`` in BF16, in exactly the layout
  transformers' ``save_pretrained`` writes (experts as ``mlp.experts.gate_up_proj`` [E, H, 2I] and
  ``mlp.experts.down_proj`` [E, I, H], input dimension first).
* :func:`modelopt_nvfp4_export` runs ``mtq.quantize(model, mtq.NVFP4_MLP_ONLY_CFG, forward_loop)`` followed
  by ``export_hf_checkpoint`` on it, i.e. what Model Optimizer's ``hf_ptq`` flow writes for
  ``--qformat nvfp4_mlp_only``. The result is the reference a converter's output is compared with.
* :func:`modelopt_amax_hooks` records, with plain forward hooks on an unquantized model, the activation
  amax of each expert projection input; ``input_scale == float32(amax) / (6 * 448)`` bit for bit.

CPU notes (Model Optimizer 0.47.0, transformers 5.14.1, torch 2.13 CPU): no workaround is needed.
``mtq.quantize`` with the default ``max`` algorithm only *collects* amax during the forward loop (all
quantizers run with fake quantization disabled), and the export's own probe forward also runs with every
quantizer disabled, so neither touches the CUDA-only NVFP4 fake-quant kernel. What does NOT work on CPU is
running the model *after* ``mtq.quantize`` (fake-quantized inference): it raises
``AssertionError: amax must be a CUDA tensor for dynamic block quantization``. So never call the model
between ``quantize`` and ``export_hf_checkpoint`` here. Model Optimizer switches the model's experts to
transformers' ``eager`` experts implementation for calibration (transformers 5 defaults to
``grouped_mm``, which its matmul interception cannot see); we request ``eager`` explicitly at load time
so that this oracle and :func:`modelopt_amax_hooks` run the identical forward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = [
    "EXPERT_PROJECTIONS",
    "calib_forward",
    "load_bf16_gptoss",
    "make_tiny_bf16_gptoss",
    "modelopt_amax_hooks",
    "modelopt_nvfp4_export",
]

EXPERT_PROJECTIONS = ("gate_up_proj", "down_proj")

# gpt-oss YaRN constants (rope_theta, factor, beta_fast, beta_slow). The release uses
# original_max_position_embeddings = 4096 and max_position_embeddings = 4096 * 32 = 131072.
_ROPE_THETA = 150000.0
_YARN_FACTOR = 32.0
_YARN_BETA_FAST = 32.0
_YARN_BETA_SLOW = 1.0


def make_tiny_bf16_gptoss(
    out_dir: str | Path,
    *,
    layers: int = 2,
    experts: int = 4,
    top_k: int = 2,
    hidden: int = 64,
    intermediate: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 16,
    vocab: int = 128,
    sliding_window: int = 8,
    seed: int = 0,
    max_position_embeddings: int = 256,
    edge_blocks: bool = True,
) -> Path:
    """Write a random BF16 ``GptOssForCausalLM`` with ``save_pretrained`` (safetensors) and return its folder.

    RoPE is YaRN exactly as gpt-oss configures it (theta 150000, factor 32, beta_fast 32, beta_slow 1,
    truncate False) except that ``original_max_position_embeddings`` is scaled down with the model:
    ``max_position_embeddings / 32`` (8 for the default 256), which keeps the release's relation
    ``max_position_embeddings == factor * original_max_position_embeddings``.

    Weights are drawn from ``seed`` only (a private ``torch.Generator``): linear weights N(0, 0.02), biases
    N(0, 0.02), sinks N(0, 0.5), norm weights 1 + N(0, 0.05), router N(0, 0.1) so routing varies. The expert
    weights are N(0, 0.02) with ~0.3% outliers multiplied by U(4, 16), so the global amax sits well above
    the typical block amax and the E4M3 block scales spread over many binades. With ``edge_blocks`` a few
    16-element blocks (blocks run along the INPUT axis, i.e. axis 1 of the [E, in, out] tensors) are made
    special, in both projections of every layer:

    * expert 0, output column 0, inputs 0..15: all zeros, alternating +0.0 / -0.0 (block amax 0 -> scale 1.0);
    * expert 1 % E, output column 1, inputs 16..31 (or 0..15 if in < 32): scaled by 3e-4 (block scale lands in the E4M3 subnormal range);
    * expert 2 % E, output column 2, inputs 0..15: scaled by 1e-9 (scale clamps to 2**-9, values round to 0,
      so negative ones become the -0 code 0x8).
    """
    from transformers import GptOssConfig, GptOssForCausalLM

    if max_position_embeddings % int(_YARN_FACTOR):
        raise ValueError("max_position_embeddings must be a multiple of the YaRN factor 32")
    if hidden % 32 or intermediate % 32:
        raise ValueError("hidden and intermediate must be multiples of 32 (NVFP4 blocks, nibble packing)")
    out_dir = Path(out_dir)
    cfg = GptOssConfig(
        num_hidden_layers=layers,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        sliding_window=sliding_window,
        max_position_embeddings=max_position_embeddings,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": _ROPE_THETA,
            "factor": _YARN_FACTOR,
            "beta_fast": _YARN_BETA_FAST,
            "beta_slow": _YARN_BETA_SLOW,
            "truncate": False,
            "original_max_position_embeddings": max_position_embeddings // int(_YARN_FACTOR),
        },
        architectures=["GptOssForCausalLM"],
        tie_word_embeddings=False,
    )
    model = GptOssForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + normal(p.shape, 0.05))
            elif name.endswith("sinks"):
                p.copy_(normal(p.shape, 0.5))
            elif ".mlp.router." in name:
                p.copy_(normal(p.shape, 0.1))
            elif name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                w = normal(p.shape, 0.02)
                outlier = torch.rand(p.shape, generator=gen) < 0.003
                boost = 4.0 + 12.0 * torch.rand(p.shape, generator=gen)
                w = torch.where(outlier, w * boost, w)
                if edge_blocks:
                    _apply_edge_blocks(w)
                p.copy_(w)
            else:
                p.copy_(normal(p.shape, 0.02))
    model = model.to(torch.bfloat16)
    if edge_blocks:  # the -0.0 entries survive only if written after the bf16 cast
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in EXPERT_PROJECTIONS:
                    w = getattr(layer.mlp.experts, proj)
                    zero = torch.zeros(16, dtype=w.dtype)
                    zero[1::2] = -0.0
                    w[0, 0:16, 0] = zero
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def _apply_edge_blocks(w: torch.Tensor) -> None:
    """Special blocks in an [E, in, out] float32 expert tensor (see make_tiny_bf16_gptoss)."""
    n_exp, n_in, _ = w.shape
    w[0, 0:16, 0] = 0.0
    lo = 16 if n_in >= 32 else 0
    w[1 % n_exp, lo : lo + 16, 1] *= 3e-4
    w[2 % n_exp, 0:16, 2] *= 1e-9


def load_bf16_gptoss(src_dir: str | Path):
    """Load a gpt-oss folder with transformers, BF16 on CPU, eager attention and eager experts, eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(src_dir),
        dtype=torch.bfloat16,
        device_map=None,
        attn_implementation="eager",
        experts_implementation="eager",
    )
    model.eval()
    return model


def calib_forward(model, calib_ids: Sequence[Sequence[int]]) -> None:
    """The calibration loop: one forward per sequence, batch 1, no attention mask, no KV cache."""
    if not calib_ids:
        raise ValueError("calib_ids must hold at least one sequence")
    with torch.no_grad():
        for ids in calib_ids:
            model(input_ids=torch.tensor([list(ids)], dtype=torch.long), use_cache=False)


def modelopt_nvfp4_export(
    src_dir: str | Path, out_dir: str | Path, calib_ids: Sequence[Sequence[int]]
) -> Path:
    """Quantize ``src_dir`` with ``mtq.NVFP4_MLP_ONLY_CFG`` (max calibration over ``calib_ids``) and export it.

    Returns ``out_dir``, which then holds ``config.json`` (with ``quantization_config``),
    ``generation_config.json``, ``hf_quant_config.json`` and ``model.safetensors``. Runs on CPU.
    """
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    out_dir = Path(out_dir)
    model = load_bf16_gptoss(src_dir)
    calib = [list(ids) for ids in calib_ids]
    model = mtq.quantize(model, mtq.NVFP4_MLP_ONLY_CFG, lambda m: calib_forward(m, calib))
    # No forward here: NVFP4 fake quantization is CUDA-only (see module docstring).
    with torch.no_grad():
        export_hf_checkpoint(model, export_dir=str(out_dir))
    return out_dir


def modelopt_amax_hooks(src_dir: str | Path, calib_ids: Sequence[Sequence[int]]) -> dict[str, float]:
    """Per-layer expert-projection input amax over the calibration set, recorded with forward hooks.

    Keys are ``model.layers.N.mlp.experts.gate_up_proj`` and ``...down_proj``; values are Python floats
    holding the BF16 amax exactly. ``gate_up_proj``: max |x| over the MoE input of every token (every token is
    routed, so this is also the max over all experts' routed tokens). ``down_proj``: max |act| over the
    output of ``GptOssExperts._apply_gate`` (the SwiGLU), all experts, routed tokens only. This is what Model
    Optimizer's input quantizers record; the exported ``<proj>_input_scale`` equals
    ``torch.tensor(amax, dtype=torch.float32) / 2688.0`` exactly.
    """
    model = load_bf16_gptoss(src_dir)
    amax: dict[str, float] = {}
    handles = []

    def _record(key: str, t: torch.Tensor) -> None:
        value = float(t.detach().abs().max()) if t.numel() else 0.0
        amax[key] = max(amax.get(key, -math.inf), value)

    for idx, layer in enumerate(model.model.layers):
        experts = layer.mlp.experts
        prefix = f"model.layers.{idx}.mlp.experts."

        def pre_hook(_module, args, kwargs, key=prefix + "gate_up_proj"):
            hidden = args[0] if args else kwargs["hidden_states"]
            _record(key, hidden)

        handles.append(experts.register_forward_pre_hook(pre_hook, with_kwargs=True))
        original = experts._apply_gate

        def apply_gate(gate_up, _orig=original, key=prefix + "down_proj"):
            out = _orig(gate_up)
            _record(key, out)
            return out

        experts._apply_gate = apply_gate  # instance attribute shadows the method; model is private here
    try:
        calib_forward(model, calib_ids)
    finally:
        for h in handles:
            h.remove()
    return amax
