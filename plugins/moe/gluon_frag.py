"""The grouped MoE GEMM on `nvfp4_frag` storage, in Gluon (Triton's explicit-layout dialect), for Hopper GPUs.

Triton's own GEMM (`triton_kernels._expert_gemm_kernel`) decodes a weight tile in a blocked layout and then
converts it to the tensor-core operand layout through shared memory: 16 KiB written and read back per
128-input step, two barriers. Here the layouts are explicit: the tile's bytes (stored in operand order,
`plugins.moe.e2m1_frag`) are copied to shared memory by cp.async (with the block scales and the two
activation tiles, `STAGES` steps ahead), read back with 16-byte loads straight into the layout of the
`wgmma` A operand, decoded there by the spread PTX program and fed to `warpgroup_mma` (A from registers,
the activations as B from shared memory). Every relayout below is asserted trivial (registers only).

Decode: E2M1 codes land at bf16 exponent 2**-126 (`e2m1_spread`); a block scale b becomes the bf16 value
b * 2**15 (the E4M3 -> float16 conversion, whose bits shifted right by 3 are b * 2**-112 in bf16, times
2**127); their product, e2m1 * e4m3 * 2**-111, is exact in bf16 (at most 6 significant bits, no underflow).
The global scale and 2**111 multiply the float32 accumulator once, after the K loop: the weights enter
the MMA unrounded (the reference rounds e2m1 * e4m3 * global to bf16 first; the two agree to bf16).

GPU only (sm_90, bf16 activations): imported by `plugins.moe.fused` only when a layer is stored as
`nvfp4_frag`, which `plugins.moe_layer.TrtkitMoE` does only where `available()` says so. Launch grid and
arguments mirror `_expert_gemm_kernel` (gate_up with the SwiGLU epilogue; down with split-K slices).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia import hopper
from triton.experimental.gluon.language.nvidia.ampere import async_copy

from plugins.moe import e2m1_frag, e2m1_spread

WARPS = 4
# Gluon renames between Triton releases (3.6: the H100 runs; 3.9: the CPU tests' sm_90 compile): the CTA-wide
# barrier, and the cp.async copy global -> shared
_barrier = getattr(gl, "barrier", None) or gl.thread_barrier
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
_M, _P = e2m1_spread.MASK, e2m1_spread._PAIR_BITS
# $0..$3 out: low-half codes of rows r and r+8, high-half codes of rows r and r+8 (bf16x2 each); $4 one stored
# group; $5 (scale low, scale high) of row r as bf16x2, $6 those of row r+8. `e2m1_spread.PROGRAM`'s words.
DECODE_PTX = gl.constexpr(f"""{{
.reg .b32 r, q, sl0, sh0, sl8, sh8;
prmt.b32 sl0, $5, $5, 0x1010; prmt.b32 sh0, $5, $5, 0x3232;
prmt.b32 sl8, $6, $6, 0x1010; prmt.b32 sh8, $6, $6, 0x3232;
and.b32 r, $4, {_M:#x}; mul.rn.bf16x2 $0, r, sl0;
shf.l.wrap.b32 r, $4, $4, {e2m1_spread.WORDS[1][0][0]}; and.b32 r, r, {_M:#x}; mul.rn.bf16x2 $1, r, sl8;
shf.l.wrap.b32 r, $4, $4, {e2m1_spread.WORDS[2][0][0]}; and.b32 r, r, {_M:#x}; mul.rn.bf16x2 $2, r, sh0;
shf.l.wrap.b32 r, $4, $4, {e2m1_spread.WORDS[3][0][0]}; shf.l.wrap.b32 q, $4, $4, {e2m1_spread.WORDS[3][1][0]};
and.b32 q, q, {_P:#x}; lop3.b32 r, q, r, {_M & ~_P:#x}, 0xF8; mul.rn.bf16x2 $3, r, sh8;
}}""")
# 4 E4M3 block-scale bytes -> 4 bf16: value * 2**15 (float16 bits >> 3 = value * 2**-112 as bf16; * 2**127)
SCALE_PTX = gl.constexpr("""{
.reg .b16 l, h; .reg .b32 a, b, c;
mov.b32 {l, h}, $2;
cvt.rn.f16x2.e4m3x2 a, l; cvt.rn.f16x2.e4m3x2 b, h;
shr.b32 a, a, 3; shr.b32 b, b, 3;
mov.b32 c, 0x7F007F00;
mul.rn.bf16x2 $0, a, c; mul.rn.bf16x2 $1, b, c;
}""")
ACC_FACTOR = gl.constexpr(2.0 ** 111)  # weights enter the MMA as e2m1 * e4m3 * 2**-111


@dataclass(frozen=True)
class TileLayouts:
    """The layouts of one K step over a tile of 64 rows x h bytes (h = 64: a 128-input chunk; 32: the tail),
    all derived from `e2m1_frag.tile_bits(h)` (the operand A layout of a [64, h] bf16 wgmma tile)."""

    h: int
    block_m: int

    def _derived(self, split, shape: list[int]) -> gl.DistributedLinearLayout:
        """The operand A layout with each (row, input) basis mapped through split into `shape`'s dims."""
        c = [split(v, 0) if axis == "n" else split(0, v) for axis, v in e2m1_frag.tile_bits(self.h)]
        regs, lanes, warps = e2m1_frag.thread_bits(self.h)
        return gl.DistributedLinearLayout([c[i] for i in regs], [c[i] for i in lanes], [c[i] for i in warps], [],
                                          shape)

    @property
    def flat(self) -> gl.DistributedLinearLayout:
        """The tile's bytes as stored, [64 * h]: 16 consecutive bytes a thread (plus 16 more at +512, h = 64)."""
        regs, lanes, warps = ([[1 << i] for i in bits] for bits in e2m1_frag.thread_bits(self.h))
        return gl.DistributedLinearLayout(regs, lanes, warps, [], [64 * self.h])

    @property
    def perm(self) -> tuple[int, ...]:
        """Dims of the tile's bytes viewed as [2] * bits (dim d = address bit B-1-d) -> (rows high to low,
        input positions high to low), so a reshape gives [64, h/16, 16]."""
        bits = e2m1_frag.tile_bits(self.h)
        order = sorted(range(len(bits)), key=lambda b: (bits[b][0] != "n", -bits[b][1]))
        return tuple(len(bits) - 1 - b for b in order)

    @property
    def l3(self) -> gl.DistributedLinearLayout:   # [64, h/16, 16]: (row, block, input in block)
        return self._derived(lambda n, j: [n, j >> 4, j & 15], [64, self.h // 16, 16])

    @property
    def l4(self) -> gl.DistributedLinearLayout:   # [64, h/16, 8, 2]: the input in block split (pair, element)
        return self._derived(lambda n, j: [n, j >> 4, (j & 15) >> 1, j & 1], [64, self.h // 16, 8, 2])

    @property
    def scale(self) -> gl.DistributedLinearLayout:
        """The tile's block-scale bytes [64, h/8] (row, 2 * block + half) as each thread needs them: its two rows
        (n, n+8), all of their bytes; the four lanes of a row read the same bytes."""
        byte_bits = [[0, 1 << i] for i in range((self.h // 8).bit_length() - 1)]
        return gl.DistributedLinearLayout(byte_bits + [[8, 0]], [[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]],
                                          [[16, 0], [32, 0]], [], [64, self.h // 8])

    @property
    def mma(self) -> gl.NVMMADistributedLayout:
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, self.block_m, 16])

    @property
    def a_op(self) -> gl.DotOperandLayout:
        return gl.DotOperandLayout(operand_index=0, parent=self.mma, k_width=2)

    @property
    def act(self) -> gl.BlockedLayout:            # cp.async of an activation tile [block_m, h], 16 bytes a thread
        return gl.BlockedLayout([1, 8], [32 // (self.h // 8), self.h // 8], [WARPS, 1], [1, 0])

    @property
    def act_smem(self) -> gl.NVMMASharedLayout:
        return gl.NVMMASharedLayout.get_default_for([self.block_m, self.h], gl.bfloat16)

    @property
    def code_copy(self) -> gl.BlockedLayout:      # cp.async of the tile's bytes, 16 a thread
        return gl.BlockedLayout([16], [32], [WARPS], [0])

    @property
    def scale_copy(self) -> gl.BlockedLayout:     # cp.async of the scale bytes, 4 a thread
        return gl.BlockedLayout([1, 4], [32 // (self.h // 32), self.h // 32], [WARPS, 1], [1, 0])

    def args(self) -> dict:
        return {"FLAT": self.flat, "L3": self.l3, "L4": self.l4,
                "SC": self.scale, "A_OP": self.a_op, "ACT": self.act, "ACT_SMEM": self.act_smem,
                "W_COPY": self.code_copy, "S_COPY": self.scale_copy}


# `_decode_tile`'s literal reorders of a tile's address bits, by bytes a row (checked against tile_bits below)
PERMS = {64: (0, 1, 10, 3, 4, 5, 2, 8, 9, 6, 7, 11), 32: (0, 1, 9, 2, 3, 4, 7, 8, 5, 6, 10)}


@gluon.jit
def _decode_tile(w_tile, s_tile, H: gl.constexpr, FLAT: gl.constexpr, L3: gl.constexpr, L4: gl.constexpr,
                 SC: gl.constexpr, A_OP: gl.constexpr):
    """A tile's code and scale bytes in shared memory -> the low-half and high-half operands [64, H] (bf16, A_OP)."""
    # the bytes as address bits, reordered to (rows, input positions): `TileLayouts.perm`, written out here since
    # Gluon takes shapes and orders as literals (PERMS checks them at import)
    if H == 64:
        code = gl.permute(gl.reshape(w_tile.load(FLAT), [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]),
                          [0, 1, 10, 3, 4, 5, 2, 8, 9, 6, 7, 11])
    else:
        code = gl.permute(gl.reshape(w_tile.load(FLAT), [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]),
                          [0, 1, 9, 2, 3, 4, 7, 8, 5, 6, 10])
    code = gl.convert_layout(gl.reshape(code, [64, H // 16, 16]), L3, assert_trivial=True)
    s = gl.reshape(s_tile.load(SC), [64, H // 16, 2])                   # (row, block, half) bytes
    s = gl.inline_asm_elementwise(SCALE_PTX, "=r,=r,r", [s], dtype=gl.bfloat16, is_pure=True, pack=4)
    s = gl.convert_layout(s, gl.SliceLayout(2, L4), assert_trivial=True)
    s = gl.broadcast(gl.expand_dims(s, 2), gl.full([64, H // 16, 8, 2], 0, gl.bfloat16, L4))[0]
    s = gl.convert_layout(gl.reshape(s, [64, H // 16, 16]), L3, assert_trivial=True)
    lo, hi = gl.inline_asm_elementwise(DECODE_PTX, "=r,=r,=r,=r,r,r,r", [code, s],
                                       dtype=(gl.bfloat16, gl.bfloat16), is_pure=True, pack=4)
    lo = gl.convert_layout(gl.reshape(lo, [64, H]), A_OP, assert_trivial=True)
    hi = gl.convert_layout(gl.reshape(hi, [64, H]), A_OP, assert_trivial=True)
    return lo, hi


@gluon.jit
def _issue(i, live, w_smem, s_smem, lo_smem, hi_smem, w_ptrs, s_ptrs, a_ptrs, a_mask, N, H: gl.constexpr,
           STAGES: gl.constexpr):
    """cp.async of step i's tile bytes, scale bytes and two activation tiles into ring slot i % STAGES."""
    slot = i % STAGES
    _async_load(w_smem.index(slot), w_ptrs + i * N * H, mask=live)
    _async_load(s_smem.index(slot), s_ptrs + i * N * (H // 8), mask=live)
    _async_load(lo_smem.index(slot), a_ptrs + i * 2 * H, mask=a_mask & live)
    _async_load(hi_smem.index(slot), a_ptrs + i * 2 * H + H, mask=a_mask & live)
    async_copy.commit_group()


@gluon.jit
def _tile_ptrs(w_e, s_e, a_row, t, k0, N, H: gl.constexpr, ACT: gl.constexpr, W_COPY: gl.constexpr,
               S_COPY: gl.constexpr):
    """Pointers of the tile t of the chunk starting at input k0 (all chunks before it full): code bytes, scale
    bytes, activation tile (low half; + H the high half)."""
    w_ptrs = w_e + (k0 // 2) * N + t * 64 * H + gl.arange(0, 64 * H, layout=W_COPY)
    sr = gl.arange(0, 64, layout=gl.SliceLayout(1, S_COPY))
    sc = gl.arange(0, H // 8, layout=gl.SliceLayout(0, S_COPY))
    s_ptrs = s_e + (k0 // 16) * N + t * 64 * (H // 8) + sr[:, None] * (H // 8) + sc[None, :]
    cols = gl.arange(0, H, layout=gl.SliceLayout(0, ACT))
    a_ptrs = gl.convert_layout(a_row, gl.SliceLayout(1, ACT))[:, None] + k0 + cols[None, :]
    return w_ptrs, s_ptrs, a_ptrs


@gluon.jit
def frag_gemm_kernel(
        a_ptr, w_ptr, s_ptr, gs_ptr, bias_ptr, out_ptr, sorted_ptr, block_expert_ptr, total_ptr,
        NK, K, N, k_split, stride_am, stride_we, stride_se, stride_be, stride_om, stride_os, limit, alpha,
        GATE_UP: gl.constexpr, SWIGLU: gl.constexpr, TOP_K: gl.constexpr, BLOCK_M: gl.constexpr,
        STAGES: gl.constexpr,
        MMA: gl.constexpr, EPI: gl.constexpr, EPI2: gl.constexpr,
        FLAT: gl.constexpr, L3: gl.constexpr, L4: gl.constexpr, SC: gl.constexpr, A_OP: gl.constexpr,
        ACT: gl.constexpr, ACT_SMEM: gl.constexpr, W_COPY: gl.constexpr, S_COPY: gl.constexpr,
        T_FLAT: gl.constexpr, T_L3: gl.constexpr, T_L4: gl.constexpr, T_SC: gl.constexpr, T_A_OP: gl.constexpr,
        T_ACT: gl.constexpr, T_ACT_SMEM: gl.constexpr, T_W_COPY: gl.constexpr, T_S_COPY: gl.constexpr):
    """One BLOCK_M block of sorted rows times output rows [64 t, 64 t + 64) of its expert's weight, over input
    rows [k_split * program_id(2), + k_split) (semantics of `triton_kernels._expert_gemm_kernel`, swap_ab).
    SWIGLU (gate_up in one split): the SwiGLU outputs, stored at the sorted row; else the float32 partial
    product of this split at row `flat` of slice program_id(2) (down; gate_up split over K for few tokens,
    finished by `triton_kernels._swiglu_splits_kernel`)."""
    pid_m = gl.program_id(0)
    if pid_m * BLOCK_M < gl.load(total_ptr):
        expert = gl.load(block_expert_ptr + pid_m).to(gl.int64)
        t = gl.program_id(1)
        split = gl.program_id(2)
        k_lo = gl.multiple_of(split * k_split, 128)
        k_hi = gl.minimum(k_lo + k_split, K)
        steps = (k_hi - k_lo) // 128
        rows = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, ACT))
        flat = gl.load(sorted_ptr + rows)
        valid = flat < NK
        if GATE_UP:
            a_rows = flat // TOP_K
        else:
            a_rows = rows
        a_row = a_ptr + gl.where(valid, a_rows, 0).to(gl.int64) * stride_am
        w_e = w_ptr + expert * stride_we
        s_e = s_ptr + expert * stride_se
        w_ptrs, s_ptrs, a_ptrs = _tile_ptrs(w_e, s_e, a_row, t, k_lo, N, 64, ACT, W_COPY, S_COPY)
        a_mask = valid[:, None] & (gl.arange(0, 64, layout=gl.SliceLayout(0, ACT)) < 64)[None, :]
        w_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, 64 * 64], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        s_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, 64, 8], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        lo_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, 64], ACT_SMEM)
        hi_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, 64], ACT_SMEM)
        tw = gl.allocate_shared_memory(gl.uint8, [1, 64 * 32], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        ts = gl.allocate_shared_memory(gl.uint8, [1, 64, 4], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        tlo = gl.allocate_shared_memory(gl.bfloat16, [1, BLOCK_M, 32], T_ACT_SMEM)
        thi = gl.allocate_shared_memory(gl.bfloat16, [1, BLOCK_M, 32], T_ACT_SMEM)
        for i in gl.static_range(STAGES - 1):
            _issue(i, i < steps, w_smem, s_smem, lo_smem, hi_smem, w_ptrs, s_ptrs, a_ptrs, a_mask, N, 64, STAGES)
        acc = gl.zeros([64, BLOCK_M], gl.float32, MMA)
        for i in range(steps):
            _issue(i + STAGES - 1, i + STAGES - 1 < steps, w_smem, s_smem, lo_smem, hi_smem, w_ptrs, s_ptrs, a_ptrs,
                   a_mask, N, 64, STAGES)
            async_copy.wait_group(STAGES - 1)
            _barrier()
            slot = i % STAGES
            lo, hi = _decode_tile(w_smem.index(slot), s_smem.index(slot), 64, FLAT, L3, L4, SC, A_OP)
            hopper.fence_async_shared()
            acc = hopper.warpgroup_mma(lo, lo_smem.index(slot).permute((1, 0)), acc)
            acc = hopper.warpgroup_mma(hi, hi_smem.index(slot).permute((1, 0)), acc)
            _barrier()   # the slot is refilled by the next step's copies
        async_copy.wait_group(0)
        k_tail = k_lo + steps * 128
        if k_tail < k_hi:         # the 64-input tail chunk (K % 128 == 64), tiles of 64 x 32 bytes
            tw_ptrs, ts_ptrs, ta_ptrs = _tile_ptrs(w_e, s_e, a_row, t, k_tail, N, 32, T_ACT, T_W_COPY, T_S_COPY)
            ta_mask = gl.convert_layout(valid, gl.SliceLayout(1, T_ACT))[:, None] & (
                gl.arange(0, 32, layout=gl.SliceLayout(0, T_ACT)) < 32)[None, :]
            _issue(0, k_tail < k_hi, tw, ts, tlo, thi, tw_ptrs, ts_ptrs, ta_ptrs, ta_mask, N, 32, 1)
            async_copy.wait_group(0)
            _barrier()
            lo, hi = _decode_tile(tw.index(0), ts.index(0), 32, T_FLAT, T_L3, T_L4, T_SC, T_A_OP)
            hopper.fence_async_shared()
            acc = hopper.warpgroup_mma(lo, tlo.index(0).permute((1, 0)), acc)
            acc = hopper.warpgroup_mma(hi, thi.index(0).permute((1, 0)), acc)
        acc = acc * ACC_FACTOR * gl.load(gs_ptr).to(gl.float32)
        acc = gl.convert_layout(gl.permute(acc, (1, 0)), EPI)                    # [BLOCK_M, 64]
        n = t * 64 + gl.arange(0, 64, layout=gl.SliceLayout(0, EPI))
        bias = gl.load(bias_ptr + expert * stride_be + n, mask=(n < N) & (split == 0), other=0.0)
        acc = acc + bias.to(gl.float32)[None, :]
        if SWIGLU:
            gate, up = gl.split(gl.reshape(acc, [BLOCK_M, 32, 2]))
            gate = gl.minimum(gate, limit)
            up = gl.minimum(gl.maximum(up, -limit), limit)
            act = gl.convert_layout((up + 1.0) * (gate / (1.0 + gl.exp(-(gate * alpha)))), EPI2)
            r = gl.convert_layout(rows, gl.SliceLayout(1, EPI2))
            ok = gl.convert_layout(valid, gl.SliceLayout(1, EPI2))
            c = t * 32 + gl.arange(0, 32, layout=gl.SliceLayout(0, EPI2))
            gl.store(out_ptr + r.to(gl.int64)[:, None] * stride_om + c[None, :], act.to(out_ptr.dtype.element_ty),
                     mask=ok[:, None] & (c < N // 2)[None, :])
        else:
            f = gl.convert_layout(flat, gl.SliceLayout(1, EPI))
            row = gl.where(f < NK, f, 0).to(gl.int64)
            gl.store(out_ptr + split * stride_os + row[:, None] * stride_om + n[None, :], acc,
                     mask=(f < NK)[:, None] & (n < N)[None, :])


if any(TileLayouts(h, 16).perm != p for h, p in PERMS.items()):
    raise AssertionError("gluon_frag.PERMS no longer matches e2m1_frag.tile_bits: update _decode_tile's literals")


@functools.cache
def launch_constexprs(block_m: int, stages: int) -> dict:
    """The constexpr arguments of `frag_gemm_kernel` for this block of rows and pipeline depth."""
    full, tail = TileLayouts(64, block_m), TileLayouts(32, block_m)
    return {"BLOCK_M": block_m, "STAGES": stages, "MMA": full.mma,
            "EPI": gl.BlockedLayout([1, 4], [2, 16], [WARPS, 1], [1, 0]),
            "EPI2": gl.BlockedLayout([1, 2], [2, 16], [WARPS, 1], [1, 0]),
            **full.args(), **{f"T_{k}": v for k, v in tail.args().items()}}


def available(device: torch.device) -> bool:
    """Whether this kernel runs here: a CUDA device of compute capability 9.x (Hopper: wgmma)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9
