"""Triton kernels of gpt-oss attention (learned sinks, optional sliding window, GQA, causal), matching
`plugins.attention.reference.attention`. Launchers live in `plugins.attention.fused`.

Online softmax in base 2: logits are scaled by sm_scale * log2(e) and each row's running max starts at
its sink logit (times log2(e)) with running sum 1, which is the sink's column of the softmax; the sink
never multiplies a value. Argument order is (inputs, int32 scalars, output) so that the prefill kernel
can also be launched ahead of time by TensorRT (`plugins.tensorrt_qdp`); sm_scale travels as the bits of
a float32 in an int32.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _online_block(acc, m_i, l_i, q, k_base, v_base, s0, pos, S, window, qk_scale, stride_ks, stride_vs,
                  MASKED: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_N: tl.constexpr,
                  HEAD_DIM: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Fold keys s0..s0+BLOCK_N-1 into (acc, m_i, l_i). MASKED=False promises every key is visible to
    every row (in range, causal, inside the window)."""
    s = s0 + tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    if MASKED:
        k = tl.load(k_base + s[:, None] * stride_ks + d[None, :], mask=(s < S)[:, None], other=0.0)
        v = tl.load(v_base + s[:, None] * stride_vs + d[None, :], mask=(s < S)[:, None], other=0.0)
    else:
        k = tl.load(k_base + s[:, None] * stride_ks + d[None, :])
        v = tl.load(v_base + s[:, None] * stride_vs + d[None, :])
    qk = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=PRECISION)            # [BM, BN] unscaled
    if MASKED:
        allowed = (s[None, :] <= pos[:, None]) & (s < S)[None, :]
        if HAS_WINDOW:
            allowed = allowed & (s[None, :] > pos[:, None] - window)
        qk = tl.where(allowed, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1) * qk_scale)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)   # a row that has seen nothing yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(qk * qk_scale - m_safe[:, None])            # one FMA per logit
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def attn_prefill_kernel(
        Q, K, V, Sinks, T, S, q_start, window, scale_bits,
        stride_qb, stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
        stride_ob, stride_ot, stride_oh, Out,
        HQ: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_WINDOW: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Program (m-block, b*HQ + h): queries q_start+m0 .. +BLOCK_M of head h against its KV head.

    Key blocks come in three runs: [lo, a_end) masked (window edge), [a_end, b_end) unmasked (every key
    visible to every row), [b_end, hi) masked (the causal diagonal)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest (causal) rows start first
    pid_bh = tl.program_id(1)
    b = (pid_bh // HQ).to(tl.int64)
    h = pid_bh % HQ
    kvh = h // GROUP
    qk_scale = scale_bits.to(tl.float32, bitcast=True) * LOG2E
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + d[None, :],
                mask=(offs_m < T)[:, None], other=0.0).to(DOT_DTYPE)
    pos = q_start + offs_m
    m_i = tl.zeros((BLOCK_M,), tl.float32) + tl.load(Sinks + h).to(tl.float32) * LOG2E
    l_i = tl.zeros((BLOCK_M,), tl.float32) + 1.0
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    hi = tl.minimum(S, q_start + m0 + BLOCK_M)
    full_hi = (q_start + m0 + 1) // BLOCK_N * BLOCK_N          # keys below it precede every row
    if HAS_WINDOW:
        lo = tl.maximum(0, q_start + m0 - window + 1) // BLOCK_N * BLOCK_N
        full_lo = tl.cdiv(tl.maximum(lo, q_start + m0 + BLOCK_M - window), BLOCK_N) * BLOCK_N
    else:
        lo = 0
        full_lo = 0
    b_end = tl.maximum(tl.minimum(full_hi, hi), lo)
    a_end = tl.minimum(tl.maximum(full_lo, lo), b_end)
    for s0 in range(lo, a_end, BLOCK_N):
        acc, m_i, l_i = _online_block(acc, m_i, l_i, q, k_base, v_base, s0, pos, S, window, qk_scale,
                                      stride_ks, stride_vs, True, HAS_WINDOW, BLOCK_N, HEAD_DIM,
                                      DOT_DTYPE, PRECISION)
    for s0 in range(a_end, b_end, BLOCK_N):
        acc, m_i, l_i = _online_block(acc, m_i, l_i, q, k_base, v_base, s0, pos, S, window, qk_scale,
                                      stride_ks, stride_vs, False, HAS_WINDOW, BLOCK_N, HEAD_DIM,
                                      DOT_DTYPE, PRECISION)
    for s0 in range(b_end, hi, BLOCK_N):
        acc, m_i, l_i = _online_block(acc, m_i, l_i, q, k_base, v_base, s0, pos, S, window, qk_scale,
                                      stride_ks, stride_vs, True, HAS_WINDOW, BLOCK_N, HEAD_DIM,
                                      DOT_DTYPE, PRECISION)
    out = acc / l_i[:, None]
    tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + d[None, :],
             out.to(Out.dtype.element_ty), mask=(offs_m < T)[:, None])


@triton.jit
def attn_decode_kernel(
        Q, K, V, Sinks, T, S, q_start, window, scale_bits, split_size,
        stride_qb, stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
        stride_ob, stride_ot, stride_oh, Out, Part_m, Part_l, Part_acc,
        HKV: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_WINDOW: tl.constexpr,
        NUM_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Program (b*HKV + kvh, split): all T*GROUP query rows of one KV head (row r = t*GROUP + g) against
    one slice of the cache. NUM_SPLITS == 1 finishes the softmax here (sink included); otherwise the
    partial (max, sum, acc) goes to Part_* and `attn_decode_reduce_kernel` adds the sink."""
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)
    kvh = pid_bh % HKV
    qk_scale = scale_bits.to(tl.float32, bitcast=True) * LOG2E
    r = tl.arange(0, BLOCK_M)
    t = r // GROUP
    h = kvh * GROUP + r % GROUP
    valid = t < T
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + t[:, None] * stride_qt + h[:, None] * stride_qh + d[None, :],
                mask=valid[:, None], other=0.0).to(DOT_DTYPE)
    pos = q_start + t
    start = split * split_size
    if HAS_WINDOW:  # keys before the first row's window are seen by no row
        start += tl.maximum(0, q_start - window + 1)
    end = tl.minimum(start + split_size, q_start + T)
    if NUM_SPLITS == 1:
        sink = tl.load(Sinks + h, mask=valid, other=0.0).to(tl.float32) * LOG2E
        m_i = sink
        l_i = tl.zeros((BLOCK_M,), tl.float32) + 1.0
    else:
        m_i = tl.zeros((BLOCK_M,), tl.float32) + float("-inf")
        l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    for s0 in range(start, end, BLOCK_N):
        acc, m_i, l_i = _online_block(acc, m_i, l_i, q, k_base, v_base, s0, pos, end, window, qk_scale,
                                      stride_ks, stride_vs, True, HAS_WINDOW, BLOCK_N, HEAD_DIM,
                                      DOT_DTYPE, PRECISION)
    if NUM_SPLITS == 1:
        out = acc / l_i[:, None]
        tl.store(Out + b * stride_ob + t[:, None] * stride_ot + h[:, None] * stride_oh + d[None, :],
                 out.to(Out.dtype.element_ty), mask=valid[:, None])
    else:
        row = (pid_bh * NUM_SPLITS + split) * BLOCK_M + r
        tl.store(Part_m + row, m_i)
        tl.store(Part_l + row, l_i)
        tl.store(Part_acc + row[:, None] * HEAD_DIM + d[None, :], acc)


@triton.jit
def attn_decode_reduce_kernel(Part_m, Part_l, Part_acc, Sinks, Out, T, stride_ob, stride_ot, stride_oh,
                              HKV: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
                              NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """Merge the splits of one (b, kvh) with each row's sink: out = sum_i acc_i 2**(m_i - m) / l."""
    pid_bh = tl.program_id(0)
    b = (pid_bh // HKV).to(tl.int64)
    kvh = pid_bh % HKV
    r = tl.arange(0, BLOCK_M)
    t = r // GROUP
    h = kvh * GROUP + r % GROUP
    valid = t < T
    d = tl.arange(0, HEAD_DIM)
    sp = tl.arange(0, SPLITS_PAD)
    rows = (pid_bh * NUM_SPLITS + sp[:, None]) * BLOCK_M + r[None, :]          # [SPLITS_PAD, BM]
    ms = tl.load(Part_m + rows, mask=(sp < NUM_SPLITS)[:, None], other=float("-inf"))
    ls = tl.load(Part_l + rows, mask=(sp < NUM_SPLITS)[:, None], other=0.0)
    sink = tl.load(Sinks + h, mask=valid, other=0.0).to(tl.float32) * LOG2E
    m = tl.maximum(sink, tl.max(ms, axis=0))
    l_sum = tl.exp2(sink - m) + tl.sum(ls * tl.exp2(ms - m[None, :]), axis=0)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    for i in range(NUM_SPLITS):
        row = (pid_bh * NUM_SPLITS + i) * BLOCK_M + r
        w = tl.exp2(tl.load(Part_m + row) - m)
        acc += w[:, None] * tl.load(Part_acc + row[:, None] * HEAD_DIM + d[None, :])
    out = acc / l_sum[:, None]
    tl.store(Out + b * stride_ob + t[:, None] * stride_ot + h[:, None] * stride_oh + d[None, :],
             out.to(Out.dtype.element_ty), mask=valid[:, None])
