"""`plugins.moe_layer.TrtkitMoE` (the MoE module of the TensorRT-LLM out-of-tree gpt-oss) loads a real NVFP4
checkpoint made by `trtkit convert`, the way TensorRT-LLM's loader hands it the tensors (one dict of the
layer's `mlp.experts.*` tensors, prefix stripped, untouched: 0-d global scales and input scales
included), and its forward equals the reference MoE over the checkpoint's own tensors bit for bit (CPU:
trtkit::moe runs the reference, so storage and slicing are what is checked)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from plugins.moe.tensors import (
    ROW_ALIGN,
    MoeTensors,
    ProjectionTensors,
    WeightFormat,
    reference_moe_from_logits,
)
from plugins.moe_layer import TrtkitMoE

PREFIX = "model.layers.{}.mlp.experts."


def experts_tensors(folder, layer: int) -> dict[str, torch.Tensor]:
    prefix = PREFIX.format(layer)
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            out.update({k.removeprefix(prefix): st.get_tensor(k) for k in st.keys() if k.startswith(prefix)})
    return out


def module_for(folder) -> tuple[TrtkitMoE, dict]:
    cfg = json.loads((folder / "config.json").read_text())
    m = TrtkitMoE(cfg["num_local_experts"], cfg["hidden_size"], cfg["intermediate_size"],
                  cfg["num_experts_per_tok"], cfg.get("swiglu_limit", 7.0), 1.702, device="cpu")
    return m, cfg


@pytest.mark.parametrize("layer", [0, 1])
def test_loads_the_checkpoint_and_matches_the_reference(tiny_nvfp4, layer):
    w = experts_tensors(tiny_nvfp4, layer)
    assert w["gate_up_proj_weight_scale_2"].ndim == 0
    m, cfg = module_for(tiny_nvfp4)
    scales = {f"{p}_input_scale": torch.tensor(0.5) for p in ("gate_up_proj", "down_proj")}  # as calibrated
    m.load_weights(weights=[{**w, **scales}])
    for name in ("gate_up_proj", "down_proj", "gate_up_proj_weight_scale", "down_proj_weight_scale"):
        p = getattr(m, name)
        assert p.stride(1) % ROW_ALIGN == 0 and p.data_ptr() % ROW_ALIGN == 0

    def proj(name):
        return ProjectionTensors(WeightFormat.NVFP4, w[name], w[name + "_weight_scale"],
                                 w[name + "_weight_scale_2"])

    ref = MoeTensors(proj("gate_up_proj"), w["gate_up_proj_bias"], proj("down_proj"), w["down_proj_bias"])
    g = torch.Generator().manual_seed(layer)
    x = torch.randn(7, cfg["hidden_size"], generator=g).to(torch.bfloat16)
    logits = torch.randn(7, cfg["num_local_experts"], generator=g).to(torch.bfloat16)
    want = reference_moe_from_logits(x, logits, ref.to_weights(), cfg["num_experts_per_tok"],
                                     cfg.get("swiglu_limit", 7.0), 1.702)
    assert torch.equal(m(x=x, router_logits=logits), want)


def test_refuses_wrong_tensors(tiny_nvfp4):
    w = experts_tensors(tiny_nvfp4, 0)
    m, _ = module_for(tiny_nvfp4)
    with pytest.raises(ValueError, match=r"mlp.experts.down_proj_bias is missing"):
        m.load_weights([{k: v for k, v in w.items() if k != "down_proj_bias"}])
    with pytest.raises(ValueError, match=r"unexpected expert tensors \['gate_up_proj_blocks'\]"):
        m.load_weights([{**w, "gate_up_proj_blocks": w["gate_up_proj"]}])
    with pytest.raises(ValueError, match=r"mlp.experts.down_proj is torch.uint8 .*expected torch.uint8 with"):
        m.load_weights([{**w, "down_proj": w["down_proj"].mT.contiguous()[:, :-1]}])
    bad = w["down_proj_weight_scale"].clone()                    # [E, in/16, out]
    bad.view(torch.uint8)[1, 2, 3] = 0xFF                          # E4M3 -NaN
    with pytest.raises(ValueError, match=r"down_proj_weight_scale holds a NaN block scale at \[1, 2, 3\]"):
        m.load_weights([{**w, "down_proj_weight_scale": bad}])


def random_checkpoint_experts(e: int, h: int, i: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """One layer's `mlp.experts.*` tensors in the Model Optimizer NVFP4 layout, random codes and scales."""
    w = {}
    for name, (n_in, n_out) in {"gate_up_proj": (h, 2 * i), "down_proj": (i, h)}.items():
        w[name] = torch.randint(0, 256, (e, n_in // 2, n_out), dtype=torch.uint8, generator=g)
        w[name + "_weight_scale"] = (torch.rand(e, n_in // 16, n_out, generator=g) * 4 + 0.1).to(torch.float8_e4m3fn)
        w[name + "_weight_scale_2"] = torch.tensor(0.003)
        w[name + "_bias"] = torch.randn(e, n_out, generator=g).to(torch.bfloat16)
    return w


def small_layer(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(checkpoint tensors, x, router logits) of a 4-expert layer of H=192, I=128 (the sizes spread and frag take)."""
    g = torch.Generator().manual_seed(seed)
    w = random_checkpoint_experts(4, 192, 128, g)
    return w, torch.randn(5, 192, generator=g).to(torch.bfloat16), torch.randn(5, 4, generator=g).to(torch.bfloat16)


def test_spread_storage_loads_and_matches_the_reference():
    """spread=True (TRTKIT_MOE_STORAGE=spread in TensorRT-LLM): the rows are stored in the kernel's order and
    handed over as nvfp4_spread; the op's CPU reference undoes it, so the output equals the checkpoint's."""
    e, h, i, k = 4, 192, 128, 2
    w, x, logits = small_layer(0)
    outs = {}
    for spread in (False, True):
        m = TrtkitMoE(e, h, i, k, 7.0, 1.702, device="cpu", spread=spread)
        m.load_weights([w])
        assert m.tensors().gate_up.fmt is (WeightFormat.NVFP4_SPREAD if spread else WeightFormat.NVFP4)
        outs[spread] = m(x=x, router_logits=logits)
    assert torch.equal(outs[True], outs[False])
    with pytest.raises(ValueError, match="multiples of 64, got 192 and 96"):
        TrtkitMoE(e, h, 96, k, 7.0, 1.702, device="cpu", spread=True)
    w["down_proj_weight_scale_2"] = torch.tensor(0.0)
    m = TrtkitMoE(e, h, i, k, 7.0, 1.702, device="cpu", spread=True)
    with pytest.raises(ValueError, match="positive normal float32"):
        m.load_weights([w])


def test_storage_defaults_to_spread_where_the_sizes_allow():
    """No storage named: spread (the faster on H100, BENCHMARKS.md) for sizes that are multiples of 64, as
    gpt-oss's 2880 is; kmajor otherwise, rather than refusing the layer."""
    assert TrtkitMoE(4, 2880, 2880, 4, 7.0, 1.702, device="meta").spread is True
    assert TrtkitMoE(4, 192, 128, 2, 7.0, 1.702, device="cpu").spread is True
    for h, i in ((192, 96), (80, 128)):
        m = TrtkitMoE(4, h, i, 2, 7.0, 1.702, device="cpu")
        assert m.spread is False and m.in_features == {"gate_up_proj": h, "down_proj": i}


def test_frag_storage_loads_and_matches_the_reference():
    """frag=True (TRTKIT_MOE_STORAGE=frag): the rows are stored in the Gluon kernel's operand order and handed
    over as nvfp4_frag; the op's CPU reference undoes it, so the output equals the checkpoint's bit for bit.
    Without a Hopper GPU the default stays spread (the Gluon kernel would not run)."""
    e, h, i, k = 4, 192, 128, 2
    w, x, logits = small_layer(1)
    outs = {}
    for frag in (False, True):
        m = TrtkitMoE(e, h, i, k, 7.0, 1.702, device="cpu", spread=True, frag=frag)
        m.load_weights([w])
        assert m.tensors().gate_up.fmt is (WeightFormat.NVFP4_FRAG if frag else WeightFormat.NVFP4_SPREAD)
        outs[frag] = m(x=x, router_logits=logits)
    assert torch.equal(outs[True], outs[False])
    assert TrtkitMoE(e, h, i, k, 7.0, 1.702, device="cpu").frag is False
    w["gate_up_proj_weight_scale"] = w["gate_up_proj_weight_scale"].clone()
    w["gate_up_proj_weight_scale"].view(torch.uint8)[0, 0, 0] = 0xB8   # -1.0: no NVFP4 writer emits it
    with pytest.raises(ValueError, match="negative E4M3 block scales.*nvfp4_spread"):
        TrtkitMoE(e, h, i, k, 7.0, 1.702, device="cpu", frag=True).load_weights([w])
