"""A gpt-oss forward composed from the plain-torch references in `plugins.attention` and `plugins.moe`.

Loads any checkpoint folder the `Checkpoint` reader accepts (MXFP4 release, BF16, NVFP4 with or without
`_input_scale`). Two modes:
  in-memory  (default)      every layer loaded once; fine for small models.
  streaming  (stream=True)  layer i is loaded, the whole batch runs through it, and it is freed: peak
                            memory is about one layer plus activations. Each call reloads every layer
                            (decode steps too), so streaming trades time for memory.
Both run the same functions on the same tensors, so their logits are bit-identical.

Shapes: B batch, T new positions, S cached positions, H hidden, Hq/Hkv heads, D head dim, V vocab.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from builder.checkpoint import Checkpoint
from builder.runtime.io import InputError
from builder.runtime.weights import (
    AttentionWeights,
    LayerWeights,
    RuntimeModeError,
    check_emulate_w4a4,
    load_embed,
    load_head,
    load_layer,
)
from builder.spec import ModelSpec
from plugins.attention import apply_rope, attention, rope_cos_sin
from plugins.moe import moe

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
Q_CHUNK = 1024  # query rows per attention call: float32 logits [B, Hq, Q_CHUNK, S] bound its memory
# on_expert_input(layer, proj_name, expert, x): activations entering one expert projection (before any
# activation quantization): "gate_up_proj" gets the MoE input rows routed to that expert [n, H],
# "down_proj" the SwiGLU output [n, I].
ExpertInputCallback = Callable[[int, str, int, torch.Tensor], None]


@dataclass(frozen=True)
class KVCache:
    """One layer's keys and values (after RoPE) at absolute positions 0..S-1."""

    k: torch.Tensor  # [B, S, Hkv, D]
    v: torch.Tensor  # [B, S, Hkv, D]

    @property
    def length(self) -> int:
        return self.k.shape[1]

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        return KVCache(torch.cat((self.k, k), dim=1), torch.cat((self.v, v), dim=1))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """In float32, then back to x's dtype (as transformers computes it)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * xf).to(x.dtype)


def rope_tables(spec: ModelSpec, q_start: int, t: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """cos, sin [T, 1, D/2] for positions q_start..q_start+T-1, broadcasting over heads."""
    r = spec.rope
    cos, sin = rope_cos_sin(torch.arange(q_start, q_start + t), spec.head_dim, r.theta, r.factor,
                            r.original_max_position_embeddings, r.beta_fast, r.beta_slow, r.truncate,
                            yarn=r.rope_type == "yarn")                       # [T, D/2] f32
    return cos[:, None].to(dtype), sin[:, None].to(dtype)


def attention_block(x: torch.Tensor, w: AttentionWeights, spec: ModelSpec, layer: int,
                    rope: tuple[torch.Tensor, torch.Tensor], cache: KVCache | None
                    ) -> tuple[torch.Tensor, KVCache]:
    """x [B, T, H] (already normed) -> (attention output [B, T, H], cache extended by T positions)."""
    b, t, _ = x.shape
    d = spec.head_dim
    q = F.linear(x, w.q_w, w.q_b).view(b, t, spec.num_attention_heads, d)  # [B, T, Hq, D]
    k = F.linear(x, w.k_w, w.k_b).view(b, t, spec.num_key_value_heads, d)  # [B, T, Hkv, D]
    v = F.linear(x, w.v_w, w.v_b).view(b, t, spec.num_key_value_heads, d)  # [B, T, Hkv, D]
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    q_start = cache.length if cache is not None else 0
    cache = cache.extend(k, v) if cache is not None else KVCache(k, v)
    window = spec.sliding_window if spec.is_sliding(layer) else None
    o = torch.cat([attention(q[:, s:s + Q_CHUNK], cache.k[:, :q_start + s + Q_CHUNK],
                             cache.v[:, :q_start + s + Q_CHUNK], w.sinks, sm_scale=d ** -0.5,
                             sliding_window=window, q_start=q_start + s)
                   for s in range(0, t, Q_CHUNK)], dim=1)                   # [B, T, Hq, D]
    return F.linear(o.reshape(b, t, spec.q_dim), w.o_w, w.o_b), cache


def decoder_layer(x: torch.Tensor, lw: LayerWeights, spec: ModelSpec, layer: int,
                  rope: tuple[torch.Tensor, torch.Tensor], cache: KVCache | None,
                  on_expert_input: ExpertInputCallback | None = None) -> tuple[torch.Tensor, KVCache]:
    """x [B, T, H] -> x [B, T, H]: pre-norm attention and MoE, each with a residual."""
    eps = spec.rms_norm_eps
    a, cache = attention_block(rms_norm(x, lw.input_norm, eps), lw.attn, spec, layer, rope, cache)
    x = x + a
    h = rms_norm(x, lw.post_norm, eps).reshape(-1, spec.hidden_size)       # [B*T, H]
    hook = partial(on_expert_input, layer) if on_expert_input is not None else None
    m = moe(h, lw.router, lw.experts, spec.num_experts_per_tok, spec.swiglu_limit, spec.swiglu_alpha,
            on_expert_input=hook)                                           # [B*T, H]
    return x + m.view_as(x), cache


class GptOssRuntime:
    """Reference gpt-oss forward over a checkpoint folder (prefill and KV-cached decode)."""

    def __init__(self, ckpt: Checkpoint, *, dtype: torch.dtype = torch.float32, stream: bool = False,
                 emulate_w4a4: bool = False, on_expert_input: ExpertInputCallback | None = None):
        if dtype not in COMPUTE_DTYPES.values():
            raise RuntimeModeError(f"compute dtype {dtype} is not supported; choose one of "
                                   f"{', '.join(COMPUTE_DTYPES)}")
        if emulate_w4a4:
            check_emulate_w4a4(ckpt)
        self.ckpt, self.spec, self.dtype = ckpt, ckpt.spec, dtype
        self.stream, self.emulate_w4a4, self.on_expert_input = stream, emulate_w4a4, on_expert_input
        self._embed = None if stream else load_embed(ckpt)
        self._head = None if stream else load_head(ckpt, dtype)
        self._layers = None if stream else [self._load(i) for i in range(self.spec.num_hidden_layers)]

    @classmethod
    def open(cls, folder: str | Path, **kwargs) -> GptOssRuntime:
        return cls(Checkpoint.open(folder), **kwargs)

    def _load(self, layer: int) -> LayerWeights:
        return load_layer(self.ckpt, layer, self.dtype, self.emulate_w4a4)

    def _check_ids(self, ids: torch.Tensor, cache: tuple[KVCache, ...] | None) -> None:
        if ids.ndim != 2 or ids.numel() == 0 or ids.dtype != torch.int64:
            raise InputError(f"token ids must be a non-empty int64 [batch, seq] tensor, got {ids.dtype} "
                             f"{tuple(ids.shape)}")
        bad = ((ids < 0) | (ids >= self.spec.vocab_size)).nonzero()
        if len(bad):
            b, t = (int(i) for i in bad[0])
            raise InputError(f"id {int(ids[b, t])} at [{b}][{t}] is outside the vocabulary "
                             f"(vocab_size {self.spec.vocab_size})")
        batches = sorted({c.k.shape[0] for c in cache}) if cache is not None else [len(ids)]
        if cache is not None and (len(cache) != self.spec.num_hidden_layers or batches != [len(ids)]):
            raise InputError(f"KV cache holds {len(cache)} layers of batch {batches}; this model has "
                             f"{self.spec.num_hidden_layers} layers and the ids batch {len(ids)}; pass the "
                             "cache returned by the previous forward")

    def _embed_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of ids [B, T] -> [B, T, H]; streaming reads only the rows it needs."""
        if self._embed is not None:
            return self._embed[ids]
        uniq, inverse = torch.unique(ids, return_inverse=True)
        name = "model.embed_tokens.weight"
        rows = torch.cat([self.ckpt.load_rows(name, int(i), int(i) + 1) for i in uniq])  # [U, H]
        return rows[inverse]

    def hidden(self, ids: torch.Tensor, cache: tuple[KVCache, ...] | None = None
               ) -> tuple[torch.Tensor, tuple[KVCache, ...]]:
        """ids int64 [B, T] -> (last decoder layer's output [B, T, H] before the final norm, cache).
        Calibration stops here: it needs the expert inputs, not the logits."""
        self._check_ids(ids, cache)
        q_start = cache[0].length if cache is not None else 0
        x = self._embed_rows(ids).to(self.dtype)                           # [B, T, H]
        rope = rope_tables(self.spec, q_start, ids.shape[1], self.dtype)
        new_cache = []
        for i in range(self.spec.num_hidden_layers):
            lw = self._layers[i] if self._layers is not None else self._load(i)
            x, c = decoder_layer(x, lw, self.spec, i, rope, cache[i] if cache is not None else None,
                                 self.on_expert_input)
            new_cache.append(c)
            del lw  # streaming: the layer is freed here
        return x, tuple(new_cache)

    def hidden_many(self, seqs: list[torch.Tensor], progress: Callable[[int], None] | None = None
                    ) -> list[torch.Tensor]:
        """Sequences of different lengths, each int64 [1, T_i], run layer-outer: layer i is loaded
        once (streaming) and every sequence passes through it before the next layer is read.
        Returns each sequence's last hidden state [1, T_i, H]; what calibration feeds on."""
        for ids in seqs:
            self._check_ids(ids, None)
        xs = [self._embed_rows(ids).to(self.dtype) for ids in seqs]        # [1, T_i, H] each
        ropes = [rope_tables(self.spec, 0, ids.shape[1], self.dtype) for ids in seqs]
        for i in range(self.spec.num_hidden_layers):
            lw = self._layers[i] if self._layers is not None else self._load(i)
            xs = [decoder_layer(x, lw, self.spec, i, rope, None, self.on_expert_input)[0]
                  for x, rope in zip(xs, ropes, strict=True)]
            del lw
            if progress:
                progress(1)
        return xs

    def forward(self, ids: torch.Tensor, cache: tuple[KVCache, ...] | None = None
                ) -> tuple[torch.Tensor, tuple[KVCache, ...]]:
        """ids int64 [B, T] continuing `cache` (None: from position 0) ->
        (logits float32 [B, T, V], cache extended by T positions)."""
        x, new_cache = self.hidden(ids, cache)
        head = self._head if self._head is not None else load_head(self.ckpt, self.dtype)
        x = rms_norm(x, head.norm, self.spec.rms_norm_eps)
        return F.linear(x, head.lm_head).float(), new_cache                # [B, T, V]

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Prefill only: float32 [B, T, V]."""
        return self.forward(ids)[0]
