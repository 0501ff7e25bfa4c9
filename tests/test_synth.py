"""Synthetic checkpoints: the released layout (transformers loads them), determinism, sharding."""

from __future__ import annotations

import json

import torch

from builder.checkpoint import Checkpoint
from builder.layout import ExpertFormat
from builder.synth import SHAPES, synth


def test_release_layout_loads_in_transformers(tiny_mxfp4):
    """transformers reads our MXFP4 folder as a gpt-oss release (dequantizing on CPU) and runs it."""
    from transformers import GptOssForCausalLM, Mxfp4Config

    model = GptOssForCausalLM.from_pretrained(tiny_mxfp4, quantization_config=Mxfp4Config(dequantize=True),
                                              dtype=torch.bfloat16)
    spec = SHAPES["tiny"].spec()
    experts = model.model.layers[0].mlp.experts
    assert tuple(experts.gate_up_proj.shape) == (spec.num_local_experts, spec.hidden_size,
                                                 2 * spec.intermediate_size)
    logits = model(torch.tensor([[1, 5, 7, 9]])).logits
    assert logits.shape == (1, 4, spec.vocab_size) and torch.isfinite(logits).all()


def test_deterministic_and_seeded(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synth(a, "tiny", seed=7)
    synth(b, "tiny", seed=7, max_shard_bytes=50_000)  # different sharding, same tensors
    synth(c, "tiny", seed=8)
    ta = Checkpoint.open(a)
    tb = Checkpoint.open(b)
    tc = Checkpoint.open(c)
    assert len(tb.headers) > 3
    diff = 0
    for name in ta.weight_map:
        x, y, z = ta.load(name), tb.load(name), tc.load(name)
        assert torch.equal(x.view(torch.uint8) if x.dim() else x, y.view(torch.uint8) if y.dim() else y)
        diff += not torch.equal(x, z)
    assert diff > 0.9 * len(ta.weight_map)
    files = sorted(p.name for p in a.iterdir())
    synth(a, "tiny", seed=7, force=True)
    assert sorted(p.name for p in a.iterdir()) == files


def test_bf16_experts_layout(tiny_bf16):
    ckpt = Checkpoint.open(tiny_bf16)
    assert ckpt.expert_format is ExpertFormat.BF16
    spec = ckpt.spec
    t = ckpt.load("model.layers.1.mlp.experts.down_proj")
    assert t.dtype == torch.bfloat16 and tuple(t.shape) == (spec.num_local_experts, spec.intermediate_size,
                                                            spec.hidden_size)
    assert "quantization_config" not in json.loads((tiny_bf16 / "config.json").read_text())


def test_full_shapes_plan_release_sizes():
    """The gpt-oss-20b/120b shapes add up to the published parameter counts (21B / 117B)."""
    from builder.layout import checkpoint_tensors

    def params(shape):
        total = 0
        for t in checkpoint_tensors(SHAPES[shape].spec(), ExpertFormat.BF16):
            n = 1
            for d in t.shape:
                n *= d
            total += n
        return total

    assert 20.5e9 < params("gpt-oss-20b") < 21.5e9
    assert 116.5e9 < params("gpt-oss-120b") < 117.5e9
