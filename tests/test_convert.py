"""End-to-end conversion of tiny checkpoints, checked against the published layout and the oracles:
transformers' MXFP4 decoder and Model Optimizer's NVFP4 quantizer / MXFP4->NVFP4 cast."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from builder.checkpoint import Checkpoint
from builder.convert import convert
from builder.layout import ExpertFormat, checkpoint_tensors
from builder.manifest import MANIFEST_NAME, verify_manifest
from builder.spec import ModelSpec

# The tiny shape, spelled out here (not taken from builder.layout) so the layout is checked independently.
E, H, INTER, LAYERS = 8, 128, 96, 2
# nvfp4-gptoss-layout.md: input-major packed weights, one 0-d weight_scale_2 per projection.
EXPECTED_EXPERT_LAYOUT = {
    "gate_up_proj": (torch.uint8, (E, H // 2, 2 * INTER)),
    "gate_up_proj_weight_scale": (torch.float8_e4m3fn, (E, H // 16, 2 * INTER)),
    "gate_up_proj_weight_scale_2": (torch.float32, ()),
    "gate_up_proj_bias": (torch.bfloat16, (E, 2 * INTER)),
    "down_proj": (torch.uint8, (E, INTER // 2, H)),
    "down_proj_weight_scale": (torch.float8_e4m3fn, (E, INTER // 16, H)),
    "down_proj_weight_scale_2": (torch.float32, ()),
    "down_proj_bias": (torch.bfloat16, (E, H)),
}


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def test_layout_and_strict_accounting(tiny_mxfp4, tiny_nvfp4):
    got = tensors(tiny_nvfp4)
    src = tensors(tiny_mxfp4)
    for layer in range(LAYERS):
        for name, (dtype, shape) in EXPECTED_EXPERT_LAYOUT.items():
            t = got.pop(f"model.layers.{layer}.mlp.experts.{name}")
            assert (t.dtype, tuple(t.shape)) == (dtype, shape), name
    # everything else is a BF16 tensor copied verbatim from the source
    expert_src = {n for n in src if ".mlp.experts." in n}
    assert set(got) == set(src) - expert_src
    for name, t in got.items():
        assert t.dtype == torch.bfloat16 and torch.equal(as_bytes(t), as_bytes(src[name])), name
    for layer in range(LAYERS):  # biases keep the interleaved gate/up order: verbatim
        for b in ("gate_up_proj_bias", "down_proj_bias"):
            name = f"model.layers.{layer}.mlp.experts.{b}"
            assert torch.equal(as_bytes(tensors(tiny_nvfp4)[name]), as_bytes(src[name]))
    Checkpoint.open(tiny_nvfp4)  # strict accounting as an NVFP4 checkpoint


def test_values_equal_transformers_mxfp4_decode(tiny_mxfp4, tiny_nvfp4):
    """Every in-range expert value equals transformers' MXFP4 dequantization bit for bit."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from plugins.formats.nvfp4 import dequantize_nvfp4

    src, got = tensors(tiny_mxfp4), tensors(tiny_nvfp4)
    for layer in range(LAYERS):
        for proj in ("gate_up_proj", "down_proj"):
            p = f"model.layers.{layer}.mlp.experts.{proj}"
            ref = convert_moe_packed_tensors(src[f"{p}_blocks"], src[f"{p}_scales"], dtype=torch.float32)
            ref = ref.transpose(-1, -2)  # transformers returns [E, in, out]; compare as [E, out, in]
            ours = dequantize_nvfp4(got[p].transpose(-1, -2), got[f"{p}_weight_scale"].transpose(-1, -2),
                                    got[f"{p}_weight_scale_2"], dtype=torch.float32)  # [E, out, in]
            # equal as numbers; bit patterns equal too except that MXFP4's -0 (nibble 0x8) becomes +0,
            # exactly as Model Optimizer writes it
            assert torch.equal(ours, ref), p
            nonzero = ref != 0
            assert torch.equal(ours[nonzero].view(torch.int32), ref[nonzero].view(torch.int32)), p


def test_bytes_equal_modelopt_lossless_cast(tiny_mxfp4, tiny_nvfp4):
    """Model Optimizer's own MXFP4->NVFP4 cast (shard_cast_utils) gives the same bytes."""
    from modelopt.torch.export.shard_cast_utils import mxfp4_kmax, quantize_mxfp4_to_nvfp4_lossless

    src, got = tensors(tiny_mxfp4), tensors(tiny_nvfp4)
    for layer in range(LAYERS):
        for proj in ("gate_up_proj", "down_proj"):
            p = f"model.layers.{layer}.mlp.experts.{proj}"
            blocks, scales = src[f"{p}_blocks"], src[f"{p}_scales"]
            packed, ws, ws2, n_blocks, n_lossless = quantize_mxfp4_to_nvfp4_lossless(
                blocks.reshape(*blocks.shape[:-2], -1), scales, mxfp4_kmax(scales), "cpu")
            assert torch.equal(got[p], packed.transpose(-1, -2)), p
            assert torch.equal(as_bytes(got[f"{p}_weight_scale"]), as_bytes(ws.transpose(-1, -2).contiguous()))
            assert torch.equal(got[f"{p}_weight_scale_2"], ws2.reshape(()))
    manifest = json.loads((tiny_nvfp4 / MANIFEST_NAME).read_text())
    total = sum(src[f"model.layers.{i}.mlp.experts.{p}_scales"].numel()
                for i in range(LAYERS) for p in ("gate_up_proj", "down_proj"))
    assert manifest["cast"]["mxfp4_blocks"] == {"exact": total, "fallback": 0, "zero_scale": 0}


def test_configs_and_exclude_modules(tiny_mxfp4, tiny_nvfp4):
    cfg = json.loads((tiny_nvfp4 / "config.json").read_text())
    hf = json.loads((tiny_nvfp4 / "hf_quant_config.json").read_text())
    q = hf["quantization"]
    assert (q["quant_algo"], q["group_size"], q["kv_cache_quant_algo"]) == ("NVFP4", 16, None)
    assert cfg["quantization_config"]["quant_method"] == "modelopt"
    assert cfg["quantization_config"]["ignore"] == q["exclude_modules"]
    assert cfg["quantization_config"]["quant_algo"] == "NVFP4"
    assert cfg["rope_theta"] == 150000.0 and cfg["rope_scaling"]["rope_type"] == "yarn"
    assert ModelSpec.from_config(cfg) == ModelSpec.from_dir(tiny_mxfp4)
    # every module left in BF16 is matched by exclude_modules, and no quantized one is
    modules = {n.rsplit(".", 1)[0] for n in tensors(tiny_nvfp4) if ".mlp.experts." not in n}
    modules -= {f"model.layers.{i}.{n}" for i in range(LAYERS)
                for n in ("input_layernorm", "post_attention_layernorm")} | {"model.norm"}
    for m in modules:
        assert any(fnmatch.fnmatch(m, pat) for pat in q["exclude_modules"]), m
    for i in range(LAYERS):
        assert not any(fnmatch.fnmatch(f"model.layers.{i}.mlp.experts", pat) for pat in q["exclude_modules"])


def test_side_files_copied_and_manifest(tiny_mxfp4, tiny_nvfp4):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja", "generation_config.json"):
        assert (tiny_nvfp4 / name).read_bytes() == (tiny_mxfp4 / name).read_bytes(), name
    manifest = json.loads((tiny_nvfp4 / MANIFEST_NAME).read_text())
    assert manifest["quantization"]["weights_only"] is True
    assert set(manifest["files"]) == {p.name for p in tiny_nvfp4.iterdir()} - {MANIFEST_NAME}
    assert verify_manifest(tiny_nvfp4) == []
    assert manifest["source"]["expert_format"] == "mxfp4" and len(manifest["source"]["checksum"]) == 64
    index = json.loads((tiny_nvfp4 / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {t.name for t in checkpoint_tensors(ModelSpec.from_dir(tiny_mxfp4),
                                                                          ExpertFormat.NVFP4)}


def test_bf16_source_equals_modelopt_quantizer(tiny_bf16, tmp_path):
    """BF16 experts ([E, in, out]) quantize exactly as NVFP4QTensor does on [E, out, in]."""
    from modelopt.torch.quantization.qtensor import NVFP4QTensor

    out = tmp_path / "nv"
    result = convert(tiny_bf16, out)
    assert result.manifest["source"]["expert_format"] == "bf16"
    src, got = tensors(tiny_bf16), tensors(out)
    for layer in range(LAYERS):
        for proj in ("gate_up_proj", "down_proj"):
            p = f"model.layers.{layer}.mlp.experts.{proj}"
            w = src[p].transpose(-1, -2).contiguous()  # [E, out, in]
            q, ws, ws2 = NVFP4QTensor.quantize(w, 16)
            assert torch.equal(got[p], q._quantized_data.transpose(-1, -2)), p
            assert torch.equal(as_bytes(got[f"{p}_weight_scale"]), as_bytes(ws.transpose(-1, -2).contiguous()))
            assert torch.equal(got[f"{p}_weight_scale_2"], ws2.reshape(()).float())


def test_out_of_range_blocks_fall_back_and_match_modelopt(tiny_mxfp4, tmp_path):
    """Blocks > 17 binades below k_max and scale byte 0 are requantized, counted, and still match."""
    import shutil

    from modelopt.torch.export.shard_cast_utils import mxfp4_kmax, quantize_mxfp4_to_nvfp4_lossless
    from safetensors.torch import save_file

    src = tmp_path / "src"
    shutil.copytree(tiny_mxfp4, src)
    shard = next(src.glob("*.safetensors"))
    data = load_file(shard)
    name = "model.layers.1.mlp.experts.down_proj_scales"
    scales = data[name].clone()
    k_max_byte = int(scales.max())
    scales[0, :4, 0] = k_max_byte - 20   # far below: out of the E4M3 window
    scales[1, :3, 1] = 0                 # scale byte 0 (2**-127)
    scales[2, 0, 0] = k_max_byte - 17    # the edge of the window: still exact
    data[name] = scales
    save_file(data, shard, metadata={"format": "pt"})
    out = tmp_path / "nv"
    result = convert(src, out)
    stats = result.manifest["cast"]["per_tensor"]["model.layers.1.mlp.experts.down_proj"]
    assert (stats["fallback"], stats["zero_scale"]) == (7, 3)
    blocks = data["model.layers.1.mlp.experts.down_proj_blocks"]
    packed, ws, ws2, n_blocks, n_lossless = quantize_mxfp4_to_nvfp4_lossless(
        blocks.reshape(*blocks.shape[:-2], -1), scales, mxfp4_kmax(scales), "cpu")
    got = tensors(out)
    assert torch.equal(got["model.layers.1.mlp.experts.down_proj"], packed.transpose(-1, -2))
    assert torch.equal(as_bytes(got["model.layers.1.mlp.experts.down_proj_weight_scale"]),
                       as_bytes(ws.transpose(-1, -2).contiguous()))
    assert stats["exact"] == n_lossless - 3  # Model Optimizer counts scale-0 blocks as lossless


def test_scope_mlp_gives_the_same_tensors(tiny_mxfp4, tiny_nvfp4, tmp_path):
    out = tmp_path / "mlp"
    convert(tiny_mxfp4, out, scope="mlp")
    for shard in tiny_nvfp4.glob("*.safetensors"):
        assert (out / shard.name).read_bytes() == shard.read_bytes()
    assert json.loads((out / MANIFEST_NAME).read_text())["quantization"]["scope"] == "mlp"


def test_sharding_respects_the_limit(tiny_mxfp4, tmp_path):
    out = tmp_path / "sharded"
    convert(tiny_mxfp4, out, max_shard_bytes=100_000)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 3
    for s in shards:
        with safe_open(str(s), "pt") as f:
            nbytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
        assert nbytes <= 100_000 or len(list(safe_open(str(s), "pt").keys())) == 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    Checkpoint.open(out)


def test_source_checksum_covers_every_byte(tiny_mxfp4, tiny_nvfp4, tmp_path):
    """The checksum hashed while converting equals one computed from scratch, and any byte changes it."""
    import shutil

    from builder.source_digest import source_checksum

    manifest = json.loads((tiny_nvfp4 / MANIFEST_NAME).read_text())
    assert manifest["source"]["checksum"] == source_checksum(tiny_mxfp4)
    copy = tmp_path / "src"
    shutil.copytree(tiny_mxfp4, copy)
    shard = next(copy.glob("*.safetensors"))
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x01  # last byte of the last tensor's data
    shard.write_bytes(bytes(raw))
    assert source_checksum(copy) != manifest["source"]["checksum"]
    out = convert(copy, tmp_path / "nv").out
    assert json.loads((out / MANIFEST_NAME).read_text())["source"]["checksum"] == source_checksum(copy)
