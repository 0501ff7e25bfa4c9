"""Synthetic gpt-oss checkpoints in the exact released Hugging Face layout.

Deterministic: every tensor chunk draws from its own generator seeded by (seed, tensor name, chunk),
so output bytes do not depend on write order or rank count. Streaming: one chunk in memory at a time.
`tiny` is the embedded default of `make build-engine` and the tests; the full shapes feed benchmarks.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from builder.layout import ExpertFormat, TensorSpec, checkpoint_tensors
from builder.parallel import Comm, SerialComm
from builder.spec import ModelSpec, RopeSpec
from builder.tokenizer_files import write_tokenizer_files
from builder.writer import (
    DEFAULT_MAX_SHARD_BYTES,
    INDEX_NAME,
    atomic_output,
    check_free_space,
    index_json,
    plan_shards,
    write_json,
    write_shards,
)

ROWS_PER_CHUNK_BYTES = 64 << 20  # generate at most ~64 MiB of a tensor at a time
MXFP4_MODULES_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                               "model.embed_tokens", "lm_head"]


@dataclass(frozen=True)
class Shape:
    """A named gpt-oss size. Values for the released models come from their config.json."""

    layers: int
    experts: int
    top_k: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    sliding_window: int
    max_positions: int
    rope: RopeSpec

    def spec(self, layers: int | None = None) -> ModelSpec:
        n = layers or self.layers
        cfg_spec = ModelSpec(
            num_hidden_layers=n, num_local_experts=self.experts, num_experts_per_tok=self.top_k,
            hidden_size=self.hidden, intermediate_size=self.intermediate, num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads, head_dim=self.head_dim, vocab_size=self.vocab,
            sliding_window=self.sliding_window, max_position_embeddings=self.max_positions,
            rms_norm_eps=1e-5, rope=self.rope,
            layer_types=tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)))
        return replace(cfg_spec, raw_config={"eos_token_id": 2, "pad_token_id": 0})


RELEASE_ROPE = RopeSpec(theta=150000.0, factor=32.0, original_max_position_embeddings=4096)
SHAPES: dict[str, Shape] = {
    # tiny: H != I and q_dim != H so that any transposed axis shows up as a shape error, not silence.
    "tiny": Shape(layers=2, experts=8, top_k=2, hidden=128, intermediate=96, heads=4, kv_heads=2,
                  head_dim=32, vocab=512, sliding_window=8, max_positions=4096,
                  rope=RopeSpec(theta=150000.0, factor=4.0, original_max_position_embeddings=1024)),
    "gpt-oss-20b": Shape(layers=24, experts=32, top_k=4, hidden=2880, intermediate=2880, heads=64,
                         kv_heads=8, head_dim=64, vocab=201088, sliding_window=128,
                         max_positions=131072, rope=RELEASE_ROPE),
    "gpt-oss-120b": Shape(layers=36, experts=128, top_k=4, hidden=2880, intermediate=2880, heads=64,
                          kv_heads=8, head_dim=64, vocab=201088, sliding_window=128,
                          max_positions=131072, rope=RELEASE_ROPE),
}

# Standard deviations of the BF16 tensors, by name suffix (first match wins).
STDS = ((".sinks", 1.0), ("layernorm.weight", 0.1), ("norm.weight", 0.1), (".bias", 0.02), ("", 0.02))
NORM_MEAN = 1.0  # RMSNorm weights are drawn around 1
# E8M0 scale bytes drawn uniformly from this range: 2**(114..121 - 127) ~ 1/8192 .. 1/64 per block, a
# spread of 8 binades, all within the exact window of the MXFP4 -> NVFP4 closed-form cast.
MX_SCALE_RANGE = (114, 122)


def _generator(seed: int, name: str, chunk: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()) * 7919 + chunk) % (2**63))
    return g


def _rows_per_chunk(t: TensorSpec) -> int:
    row_bytes = max(1, t.nbytes // max(1, t.shape[0] if t.shape else 1))
    return max(1, ROWS_PER_CHUNK_BYTES // row_bytes)


def produce_tensor(t: TensorSpec, seed: int) -> Iterator[torch.Tensor]:
    """Yield tensor `t` as chunks along its leading axis."""
    if not t.shape:
        yield torch.ones((), dtype=t.dtype)
        return
    step = _rows_per_chunk(t)
    for c, start in enumerate(range(0, t.shape[0], step)):
        shape = (min(step, t.shape[0] - start), *t.shape[1:])
        g = _generator(seed, t.name, c)
        if t.dtype == torch.uint8 and t.name.endswith("_scales"):
            yield torch.randint(*MX_SCALE_RANGE, shape, generator=g, dtype=torch.uint8)
        elif t.dtype == torch.uint8:
            yield torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        else:
            std = next(s for suffix, s in STDS if t.name.endswith(suffix))
            x = torch.randn(shape, generator=g) * std
            if t.name.endswith("norm.weight"):
                x += NORM_MEAN
            yield x.to(t.dtype)


def synth_config(spec: ModelSpec, fmt: ExpertFormat) -> dict:
    cfg = spec.to_config()
    if fmt is ExpertFormat.MXFP4:
        cfg["quantization_config"] = {"quant_method": "mxfp4",
                                      "modules_to_not_convert": MXFP4_MODULES_NOT_CONVERTED}
    cfg["torch_dtype"] = "bfloat16"
    return cfg


def synth(out: Path, shape: str, *, layers: int | None = None, seed: int = 0,
          experts_format: ExpertFormat = ExpertFormat.MXFP4, force: bool = False,
          max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, comm: Comm | None = None,
          progress: Callable[[int], None] | None = None) -> ModelSpec:
    """Write a synthetic checkpoint of `shape` into `out` (all or nothing)."""
    comm = comm or SerialComm()
    spec = SHAPES[shape].spec(layers)
    tensors = checkpoint_tensors(spec, experts_format)
    shards = plan_shards(tensors, max_shard_bytes)
    check_free_space(out, sum(s.nbytes for s in shards))
    with atomic_output(out, force, comm) as tmp:
        write_shards(tmp, shards, lambda t: produce_tensor(t, seed), comm, progress)
        if comm.rank == 0:
            write_json(tmp / "config.json", synth_config(spec, experts_format))
            write_json(tmp / INDEX_NAME, index_json(shards))
            write_json(tmp / "generation_config.json",
                       {"bos_token_id": 1, "eos_token_id": [2], "pad_token_id": 0, "do_sample": True})
            write_tokenizer_files(tmp, spec.vocab_size)
            (tmp / "trtkit_synth.json").write_text(json.dumps(
                {"shape": shape, "layers": spec.num_hidden_layers, "seed": seed,
                 "experts_format": experts_format.value}, indent=2) + "\n")
    return spec
