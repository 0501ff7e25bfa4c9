"""Plain-torch reference of gpt-oss attention: YaRN rotary embedding and sink attention (GQA, causal,
optional sliding window). A fused kernel must match these functions on the same inputs.

Shapes: B batch, T query positions, S key positions, Hq query heads, Hkv key/value heads, D head dim.
"""

from __future__ import annotations

import math

import torch

from plugins.checks import check_one_device


def _correction_dim(rotations: float, dim: int, theta: float, original_max_pos: int) -> float:
    """The (fractional) rotary dimension index that makes `rotations` turns over `original_max_pos`."""
    return dim * math.log(original_max_pos / (rotations * 2 * math.pi)) / (2 * math.log(theta))


def _ramp_bounds(dim: int, theta: float, original_max_pos: int, beta_fast: float, beta_slow: float,
                 truncate: bool) -> tuple[float, float]:
    low = _correction_dim(beta_fast, dim, theta, original_max_pos)
    high = _correction_dim(beta_slow, dim, theta, original_max_pos)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    return low, (high + 0.001 if low == high else high)  # a zero-width ramp would divide by zero


def yarn_inv_freq(head_dim: int, theta: float, factor: float = 1.0, original_max_pos: int = 4096,
                  beta_fast: float = 32.0, beta_slow: float = 1.0, truncate: bool = False,
                  yarn: bool = True) -> torch.Tensor:
    """Inverse frequencies [D/2] float32. YaRN blends the extrapolated frequencies (fast dimensions)
    with the interpolated ones (`/ factor`, slow dimensions) through a linear ramp; `yarn=False` gives
    plain RoPE. Every step runs in float32 in the order transformers uses, so the bits agree."""
    exponents = torch.arange(0, head_dim, 2).to(torch.float32) / head_dim       # [D/2]
    pos_freqs = theta ** exponents                                              # [D/2] f32
    extrapolated = 1.0 / pos_freqs
    if not yarn:
        return extrapolated
    interpolated = 1.0 / (factor * pos_freqs)
    low, high = _ramp_bounds(head_dim, theta, original_max_pos, beta_fast, beta_slow, truncate)
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    w_extra = 1 - ramp                                                          # 1: keep extrapolated
    return interpolated * (1 - w_extra) + extrapolated * w_extra


def yarn_concentration(factor: float) -> float:
    """YaRN attention scaling `0.1*ln(factor)+1` (1 when factor <= 1); multiplies cos and sin."""
    return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, factor: float = 1.0,
                 original_max_pos: int = 4096, beta_fast: float = 32.0, beta_slow: float = 1.0,
                 truncate: bool = False, yarn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [T, D/2] float32, for absolute `positions` [T], concentration included."""
    inv_freq = yarn_inv_freq(head_dim, theta, factor, original_max_pos, beta_fast, beta_slow,
                             truncate, yarn)                                    # [D/2]
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]           # [T, D/2]
    scale = yarn_concentration(factor) if yarn else 1.0
    return angles.cos() * scale, angles.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last axis of x [..., D] (not interleaved pairs).
    cos/sin must broadcast against x[..., :D/2]: [T, D/2] for x [.., T, D], [T, 1, D/2] for [B, T, H, D]."""
    first, second = x.chunk(2, dim=-1)                                          # [..., D/2] each
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    """[T, S] bool, True where query at absolute position p may see key k: k <= p and, with a window
    W, p - W < k (W keys including itself)."""
    p, k = q_pos[:, None], k_pos[None, :]
    allowed = k <= p
    if sliding_window is not None:
        allowed &= k > p - sliding_window
    return allowed


def check_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, sm_scale: float,
                    sliding_window: int | None, q_start: int) -> None:
    """The arguments of `attention` form one problem: q [B, T, Hq, D] and k/v [B, S, Hkv, D] a GQA problem
    whose queries see their keys, sinks [Hq], on one device. One ValueError naming the first argument that
    does not fit (the reference, the Triton kernels and the op's fake implementation all check here)."""
    def shapes() -> str:  # for messages only (this runs on every call)
        return f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"

    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention: {shapes()} must be [B, T, Hq, D] and [B, S, Hkv, D]")
    b, t, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    if hkv == 0 or hq % hkv or k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"attention: {shapes()} do not form a GQA problem (Hq must be a multiple of Hkv, "
                         "shapes must agree)")
    if tuple(sinks.shape) != (hq,) or not sinks.is_floating_point():
        raise ValueError(f"attention: sinks {tuple(sinks.shape)} {sinks.dtype} must be [Hq] = [{hq}] floats "
                         "(one logit per query head)")
    if not 0 < sm_scale < math.inf:
        raise ValueError(f"attention: sm_scale={sm_scale} must be a positive finite float (usually D**-0.5)")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"attention: sliding_window={sliding_window} must be None or >= 1")
    if q_start < 0 or q_start + t > s:
        raise ValueError(f"attention: queries at positions {q_start}..{q_start + t - 1} need keys up to "
                         f"there, but k has {s}; append the new keys to the cache before attending")
    check_one_device("attention", {"q": q, "k": k, "v": v, "sinks": sinks})


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, *,
              sm_scale: float, sliding_window: int | None, q_start: int) -> torch.Tensor:
    """Causal GQA attention with one learned sink logit per query head.

    q [B, T, Hq, D]; k, v [B, S, Hkv, D] hold keys at absolute positions 0..S-1; q[:, t] sits at
    absolute position q_start + t (prefill: q_start=0, S=T; decode: S = q_start + T). The sink joins
    each row's softmax denominator and is dropped. Logits and softmax run in q's dtype with the row max
    subtracted first, in the order transformers' eager gpt-oss attention uses, so that a BF16 forward
    (the calibration dtype) rounds as the oracle does; returns [B, T, Hq, D] in v's dtype.
    """
    check_attention(q, k, v, sinks, sm_scale, sliding_window, q_start)
    b, t, hq, d = q.shape
    s, hkv = k.shape[1], k.shape[2]
    g, dtype = hq // hkv, q.dtype
    qg = q.reshape(b, t, hkv, g, d).permute(0, 2, 3, 1, 4)                      # [B, Hkv, G, T, D]
    kt = k.to(dtype).permute(0, 2, 3, 1)[:, :, None]                            # [B, Hkv, 1, D, S]
    logits = (qg @ kt) * sm_scale                                               # [B, Hkv, G, T, S]
    q_pos = torch.arange(q_start, q_start + t, device=q.device)
    allowed = attention_mask(q_pos, torch.arange(s, device=q.device), sliding_window)  # [T, S]
    logits = logits.masked_fill(~allowed, float("-inf"))
    sink = sinks.to(dtype).reshape(1, hkv, g, 1, 1).expand(b, hkv, g, t, 1)    # [B, Hkv, G, T, 1]
    combined = torch.cat((logits, sink), dim=-1)                                # [B, Hkv, G, T, S+1]
    combined = combined - combined.amax(dim=-1, keepdim=True)
    probs = torch.softmax(combined, dim=-1, dtype=dtype)[..., :-1]              # drop the sink column
    out = probs.to(v.dtype) @ v.permute(0, 2, 1, 3)[:, :, None]                 # [B, Hkv, G, T, D]
    return out.permute(0, 3, 1, 2, 4).reshape(b, t, hq, d)
