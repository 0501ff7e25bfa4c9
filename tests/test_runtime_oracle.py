"""The reference runtime (builder.runtime over plugins.attention / plugins.moe) against transformers'
gpt-oss (the oracle), across formats (BF16, MXFP4, NVFP4), modes (in-memory, streaming) and the CLI.

Bounds, float32 everywhere:
* BF16 folders vs transformers (eager attention, eager experts, identical bf16-representable weights):
  max |Δlogit| <= 1e-4 absolute, prefill and every KV-cached decode step. The two sides run the same
  float32 operations in a different association (batched GQA matmuls, masked_fill vs additive mask),
  so they agree to float32 rounding (~1e-6 here); 1e-4 leaves room for BLAS blocking, not for a bug.
* tiny synthetic MXFP4 vs transformers' Mxfp4Config(dequantize=True): the same 1e-4, relative to
  max |logit| (the synthetic logits are O(1)).
* streaming vs in-memory, NVFP4 (closed-form cast) vs its MXFP4 source: bit for bit (torch.equal).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from builder.convert import convert
from builder.runtime import AmaxCollector, GptOssRuntime, InputError, RuntimeModeError, parse_input_ids
from plugins.attention import attention, attention_mask
from plugins.moe import Bf16Experts, ExpertWeights, Router, moe, route, swiglu

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


# ---- transformers-built BF16 folders ---------------------------------------------------------
@dataclass(frozen=True)
class Tiny:
    """One transformers GptOssConfig, small enough to run in well under a second."""

    layers: int
    experts: int
    top_k: int
    heads: int
    kv_heads: int
    window: int
    rope: dict
    hidden: int = 64
    intermediate: int = 32
    head_dim: int = 16
    vocab: int = 96
    layer_types: tuple[str, ...] | None = None


def yarn(factor: float, original: int = 16, truncate: bool = False) -> dict:
    return {"rope_type": "yarn", "rope_theta": 150000.0, "factor": factor, "beta_fast": 32.0,
            "beta_slow": 1.0, "truncate": truncate, "original_max_position_embeddings": original}


CONFIGS = {  # sequences are 13 long: every window is shorter
    "gqa2-yarn4": Tiny(layers=2, experts=4, top_k=2, heads=4, kv_heads=2, window=4, rope=yarn(4.0)),
    "mha-top1-plain-rope": Tiny(layers=1, experts=8, top_k=1, heads=4, kv_heads=4, window=3,
                                rope={"rope_type": "default", "rope_theta": 10000.0}),
    "gqa4-yarn32-truncate-full-first": Tiny(
        layers=3, experts=6, top_k=3, heads=8, kv_heads=2, window=5, rope=yarn(32.0, 8, truncate=True),
        layer_types=("full_attention", "sliding_attention", "sliding_attention")),
    "mqa-16experts-top4": Tiny(layers=2, experts=16, top_k=4, heads=4, kv_heads=1, window=2,
                               rope=yarn(8.0), hidden=96, intermediate=64, head_dim=32),
    "gqa2-all-experts-4layers": Tiny(layers=4, experts=4, top_k=4, heads=6, kv_heads=3, window=7,
                                     rope=yarn(2.0, 64), intermediate=64),
}


# (name suffix, std, fan-in axis or None): weights scaled by 1/sqrt(fan-in); first match wins.
INIT = (("embed_tokens.weight", 1.0, None), ("sinks", 1.0, None), ("norm.weight", 0.2, None),
        ("bias", 0.1, None), ("experts.gate_up_proj", 3.0, -2), ("experts.down_proj", 1.0, -2),
        ("q_proj.weight", 2.0, -1), ("k_proj.weight", 2.0, -1), ("weight", 1.0, -1))


def randomize(model, seed: int) -> None:
    """Weights large enough that attention is far from uniform and the SwiGLU clamps are reached."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std, axis = next((s, a) for suffix, s, a in INIT if name.endswith(suffix))
            x = torch.randn(p.shape, generator=g) * std / (p.shape[axis] ** 0.5 if axis else 1.0)
            p.copy_(x + 1.0 if name.endswith("norm.weight") else x)


def make_bf16_folder(out: Path, t: Tiny, seed: int = 0) -> Path:
    cfg = transformers.GptOssConfig(
        num_hidden_layers=t.layers, num_local_experts=t.experts, num_experts_per_tok=t.top_k,
        hidden_size=t.hidden, intermediate_size=t.intermediate, num_attention_heads=t.heads,
        num_key_value_heads=t.kv_heads, head_dim=t.head_dim, vocab_size=t.vocab, sliding_window=t.window,
        max_position_embeddings=256, rope_parameters=dict(t.rope), tie_word_embeddings=False,
        layer_types=list(t.layer_types) if t.layer_types else None, architectures=["GptOssForCausalLM"])
    model = transformers.GptOssForCausalLM(cfg)
    randomize(model, seed)
    model.to(torch.bfloat16).save_pretrained(out)
    return out


def hf_float32(folder: Path, **kwargs):
    model = transformers.GptOssForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager", **kwargs)
    return model.float().eval()  # dequantized MXFP4 experts come back BF16: exact upcast


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def random_ids(vocab: int, batch: int = 2, seq: int = 13, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def decode_chunks(rt: GptOssRuntime, ids: torch.Tensor, chunks: list[int]) -> list[torch.Tensor]:
    """Prefill chunks[0] tokens, then feed the rest chunk by chunk through the KV cache."""
    out, cache, start = [], None, 0
    for n in chunks:
        logits, cache = rt.forward(ids[:, start:start + n], cache)
        out.append(logits)
        start += n
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bf16_folder_matches_transformers(tmp_path, name):
    t = CONFIGS[name]
    folder = make_bf16_folder(tmp_path / name, t, seed=len(name))
    ids = random_ids(t.vocab)
    ref = hf_logits(hf_float32(folder), ids)                                  # [B, T, V]
    rt = GptOssRuntime.open(folder)
    got = rt.logits(ids)
    assert got.shape == ref.shape and ref.abs().max() > 1.0  # logits carry signal
    assert (got - ref).abs().max() <= TOL
    chunks = [5, 1, 1, 2, 1, 1, 1, 1]
    steps = decode_chunks(rt, ids, chunks)
    starts = [sum(chunks[:i]) for i in range(len(chunks))]
    for s, n, logits in zip(starts, chunks, steps, strict=True):
        assert (logits - ref[:, s:s + n]).abs().max() <= TOL, f"decode positions {s}..{s + n - 1}"


def test_query_chunking_changes_nothing(tmp_path, monkeypatch):
    """Long prompts attend in query chunks (memory); chunks of 3 give the transformers logits too."""
    import builder.runtime.model as runtime_model

    t = CONFIGS["gqa4-yarn32-truncate-full-first"]
    folder = make_bf16_folder(tmp_path / "m", t)
    ids = random_ids(t.vocab)
    ref = hf_logits(hf_float32(folder), ids)
    monkeypatch.setattr(runtime_model, "Q_CHUNK", 3)
    assert (GptOssRuntime.open(folder).logits(ids) - ref).abs().max() <= TOL


def test_bf16_folder_bfloat16_compute_is_close(tmp_path):
    """bfloat16 compute: same model, looser (bf16 has 8 significant bits): |Δ| <= 5% of max |logit|."""
    t = CONFIGS["gqa2-yarn4"]
    folder = make_bf16_folder(tmp_path / "m", t)
    ids = random_ids(t.vocab)
    ref = GptOssRuntime.open(folder).logits(ids)
    got = GptOssRuntime.open(folder, dtype=torch.bfloat16).logits(ids)
    assert got.dtype == torch.float32
    assert 0 < (got - ref).abs().max() <= 0.05 * ref.abs().max()


# ---- MXFP4 / NVFP4 folders -------------------------------------------------------------------
@pytest.fixture(scope="module")
def nvfp4_calibrated(tiny_mxfp4, tmp_path_factory) -> Path:
    """The tiny MXFP4 converted with input scales calibrated by the runtime's own hook (streaming)."""
    amax = AmaxCollector()
    GptOssRuntime.open(tiny_mxfp4, stream=True, on_expert_input=amax).logits(random_ids(512, 4, 32, 7))
    out = tmp_path_factory.mktemp("ckpt") / "tiny-nvfp4-w4a4"
    convert(tiny_mxfp4, out, input_scales=amax.input_scales())
    return out


def test_mxfp4_folder_matches_transformers(tiny_mxfp4):
    ids = random_ids(512, seq=20)
    ref = hf_logits(hf_float32(tiny_mxfp4, quantization_config=transformers.Mxfp4Config(dequantize=True)), ids)
    got = GptOssRuntime.open(tiny_mxfp4).logits(ids)
    assert (got - ref).abs().max() <= TOL * ref.abs().max()


@pytest.mark.parametrize("folder", ["tiny_mxfp4", "tiny_nvfp4"])
def test_streaming_equals_in_memory(request, folder):
    path = request.getfixturevalue(folder)
    ids = random_ids(512, seq=12)
    mem, stream = GptOssRuntime.open(path), GptOssRuntime.open(path, stream=True)
    assert torch.equal(mem.logits(ids), stream.logits(ids))
    for a, b in zip(decode_chunks(mem, ids, [9, 1, 2]), decode_chunks(stream, ids, [9, 1, 2]), strict=True):
        assert torch.equal(a, b)


def test_nvfp4_equals_mxfp4_source_bit_for_bit(tiny_mxfp4, tiny_nvfp4):
    """The closed-form cast is exact, so the decoded experts, and hence the logits, are identical."""
    ids = random_ids(512, seq=16)
    assert torch.equal(GptOssRuntime.open(tiny_nvfp4).logits(ids), GptOssRuntime.open(tiny_mxfp4).logits(ids))


def test_emulate_w4a4_needs_input_scales(tiny_nvfp4, tiny_mxfp4):
    for folder, why in ((tiny_nvfp4, "weights-only"), (tiny_mxfp4, "needs an NVFP4 checkpoint")):
        with pytest.raises(RuntimeModeError, match=why):
            GptOssRuntime.open(folder, emulate_w4a4=True)


def test_emulate_w4a4_rounds_moe_inputs(tiny_mxfp4, nvfp4_calibrated):
    """W4A4 moves the logits (activations lose precision) but only by NVFP4 rounding: <= 10% of max."""
    ids = random_ids(512, seq=12, seed=3)
    w4a16 = GptOssRuntime.open(nvfp4_calibrated).logits(ids)
    w4a4 = GptOssRuntime.open(nvfp4_calibrated, emulate_w4a4=True).logits(ids)
    assert torch.equal(w4a16, GptOssRuntime.open(tiny_mxfp4).logits(ids))  # input scales alone change nothing
    assert 0 < (w4a4 - w4a16).abs().max() <= 0.1 * w4a16.abs().max()


def test_amax_hook_streaming_equals_in_memory(tiny_mxfp4):
    ids = random_ids(512, seq=10, seed=5)
    mem, stream, seen = AmaxCollector(), AmaxCollector(), []
    GptOssRuntime.open(tiny_mxfp4, on_expert_input=mem).logits(ids)
    GptOssRuntime.open(tiny_mxfp4, stream=True,
                       on_expert_input=lambda *a: (stream(*a), seen.append(a[:3] + (a[3].shape,)))
                       ).logits(ids)
    assert mem.amax == stream.amax and len(mem.amax) == 4 and all(v > 0 for v in mem.amax.values())
    h, i = 128, 96
    assert {(p, s[-1]) for _, p, _, s in seen} == {("gate_up_proj", h), ("down_proj", i)}
    routed = sum(s[0] for _, p, _, s in seen if p == "gate_up_proj")
    assert routed == 2 * ids.numel() * 2  # layers * tokens * top_k


# ---- the CLI ---------------------------------------------------------------------------------
def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trtkit.cli", "forward", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_forward_writes_logits(tiny_nvfp4, tmp_path):
    ids = random_ids(512, batch=2, seq=6, seed=9)
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    out = tmp_path / "logits.safetensors"
    r = run_cli(tiny_nvfp4, "--input-ids", tmp_path / "ids.json", "--out", out, "--stream")
    assert r.returncode == 0, r.stderr
    got = load_file(out)
    assert list(got) == ["logits"] and got["logits"].dtype == torch.float32
    assert got["logits"].shape == (2, 6, 512)
    assert torch.equal(got["logits"], GptOssRuntime.open(tiny_nvfp4).logits(ids))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


@pytest.mark.parametrize("ids, message", [
    ([[1, 2, 512]], "id 512 at [0][2] is outside the vocabulary (vocab_size 512"),
    ([[1, 2], [3]], "ragged input: row 1 has 1 ids, row 0 has 2"),
    ([], "empty or not a list"),
])
def test_cli_forward_rejects_bad_ids(tiny_mxfp4, tmp_path, ids, message):
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    out = tmp_path / "logits.safetensors"
    r = run_cli(tiny_mxfp4, "--input-ids", tmp_path / "ids.json", "--out", out)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("trtkit: error:"), r.stderr
    assert message in lines[0] and not out.exists()


def test_cli_forward_rejects_checkpoint_missing_a_layer(tiny_mxfp4, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in tiny_mxfp4.iterdir():
        (broken / p.name).symlink_to(p)
    (broken / "config.json").unlink()
    cfg = json.loads((tiny_mxfp4 / "config.json").read_text())
    cfg.update(num_hidden_layers=3, layer_types=cfg["layer_types"] + ["sliding_attention"])
    (broken / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "ids.json").write_text("[[1, 2]]")
    r = run_cli(broken, "--input-ids", tmp_path / "ids.json", "--out", tmp_path / "o.safetensors")
    assert r.returncode != 0 and r.stderr.startswith("trtkit: error:")
    assert "missing" in r.stderr and "model.layers.2.self_attn.q_proj.weight" in r.stderr


def test_input_ids_rejects_non_integers():
    with pytest.raises(InputError, match=r"id at \[0\]\[1\] is 1.5"):
        parse_input_ids([[1, 1.5]], 10)
    assert parse_input_ids([[0, 9]], 10).dtype == torch.int64


# ---- the plugins references against hand computations ---------------------------------------
def test_sink_attention_equals_manual_softmax_with_extra_column():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, 2, 4, generator=g) for _ in range(3))     # [B, T, H, D], MHA
    sinks = torch.tensor([0.5, -1.0])
    got = attention(q, k, v, sinks, sm_scale=0.5, sliding_window=None, q_start=0)
    for h in range(2):
        for t in range(3):
            logits = [float(q[0, t, h] @ k[0, s, h]) * 0.5 for s in range(t + 1)] + [float(sinks[h])]
            p = torch.softmax(torch.tensor(logits), dim=0)[:-1]                # sink dropped
            want = sum(p[s] * v[0, s, h] for s in range(t + 1))
            torch.testing.assert_close(got[0, t, h], want, rtol=1e-6, atol=1e-6)


def test_sliding_window_mask_and_decode_offset():
    want = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0],
                         [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(attention_mask(torch.arange(5), torch.arange(5), 2), want)
    assert torch.equal(attention_mask(torch.arange(5), torch.arange(5), None), torch.ones(5, 5).tril().bool())
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 6, 4, 8, generator=g), torch.randn(2, 6, 2, 8, generator=g), torch.randn(2, 6, 2, 8)
    sinks = torch.randn(4, generator=g)
    full = attention(q, k, v, sinks, sm_scale=0.3, sliding_window=3, q_start=0)
    last = attention(q[:, 4:], k, v, sinks, sm_scale=0.3, sliding_window=3, q_start=4)  # decode-style
    torch.testing.assert_close(last, full[:, 4:], rtol=0, atol=1e-6)
    # GQA: query heads 2j, 2j+1 share KV head j (the same as repeating k, v per query head)
    mha = attention(q, k.repeat_interleave(2, 2), v.repeat_interleave(2, 2), sinks, sm_scale=0.3,
                    sliding_window=3, q_start=0)
    torch.testing.assert_close(full, mha, rtol=0, atol=1e-6)
    # window 1: each query sees only its own key -> v scaled by its weight against the sink
    one = attention(q, k, v, sinks, sm_scale=0.3, sliding_window=1, q_start=0)
    own = (q * k.repeat_interleave(2, 2)).sum(-1) * 0.3                       # [B, T, H]
    w = torch.sigmoid(own - sinks)                                           # e^a / (e^a + e^sink)
    torch.testing.assert_close(one, w[..., None] * v.repeat_interleave(2, 2), rtol=1e-5, atol=1e-6)


def test_swiglu_interleave_and_clamps():
    gate_up = torch.tensor([[1.0, 2.0, 9.0, -9.0, -1.0, 0.5]])              # (gate, up) pairs
    sig = torch.sigmoid
    want = torch.tensor([[1.0 * sig(torch.tensor(1.702)) * 3.0,
                          7.0 * sig(torch.tensor(7.0 * 1.702)) * (-6.0),    # gate clamp 7, up clamp -7
                          -1.0 * sig(torch.tensor(-1.702)) * 1.5]])
    torch.testing.assert_close(swiglu(gate_up, 7.0, 1.702), want)


def test_route_and_moe_decode_only_routed_experts():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [0.0, 0.0]])     # [E=4, H=2]
    b = torch.tensor([0.0, 0.0, -10.0, 0.5])
    weights, experts = route(x, w, b, 2)
    assert experts.tolist() == [[0, 3], [1, 3], [1, 0]]
    torch.testing.assert_close(weights[0], torch.softmax(torch.tensor([1.0, 0.5]), 0))

    class Counting(Bf16Experts):
        def expert(self, e, dtype):
            calls.append(e)
            return super().expert(e, dtype)

    calls: list[int] = []
    g = torch.Generator().manual_seed(2)
    gate_up, down = torch.randn(4, 2, 4, generator=g), torch.randn(4, 2, 2, generator=g)  # I = 2
    bias_gu, bias_d = torch.randn(4, 4, generator=g), torch.randn(4, 2, generator=g)
    ew = ExpertWeights(Counting(gate_up.bfloat16()), bias_gu.bfloat16(), Counting(down.bfloat16()),
                       bias_d.bfloat16())
    got = moe(x, Router(w, b), ew, top_k=2)
    assert sorted(calls) == [0, 0, 1, 1, 3, 3]                                # expert 2 never decoded
    for n in range(3):
        want = sum(float(weights[n, j]) * (swiglu(x[n] @ gate_up.bfloat16().float()[e] + bias_gu.bfloat16()[e])
                                           @ down.bfloat16().float()[e] + bias_d.bfloat16().float()[e])
                   for j, e in enumerate(experts[n].tolist()))
        torch.testing.assert_close(got[n], want)
