"""The flat tensor form of one MoE layer that the `trtkit::moe` op and the Triton kernels take.

A projection is (format, weight, scale, global_scale) in the checkpoint's own layout, never repacked:

| format | weight | scale | global_scale |
|---|---|---|---|
| `bf16`  | [E, in, out] any float dtype | - | - |
| `mxfp4` | u8 [E, out, in/32, 16] (blocks) | u8 E8M0 [E, out, in/32] | - |
| `nvfp4` | u8 [E, in/2, out] (packed, input-major) | float8_e4m3fn [E, in/16, out] | f32 0-d |
| `nvfp4_spread` | u8 [E, in/2, out] contiguous: the bytes of `nvfp4` reordered (`plugins.moe.e2m1_spread`) | float8_e4m3fn [E, in/16, out] likewise | as `nvfp4` |
| `nvfp4_frag` | u8 [E, in/2, out] contiguous: reordered for the Gluon kernel (`plugins.moe.e2m1_frag`) | as `nvfp4_spread` | as `nvfp4` |

`nvfp4_spread` is the kernel's own storage (`ProjectionTensors.k_major(spread=True)`), never a checkpoint's: its
tensors have the `nvfp4` shapes, but their bytes are in the kernel's order, chunk-major across output rows,
so they are read only through `to_experts` (`e2m1_spread.load_codes`, `load_scales`) or by the kernel.
`nvfp4_frag` (`k_major(frag=True)`) likewise, for the Hopper Gluon GEMM (`plugins.moe.gluon_frag`).

`reference_moe_from_logits` is the plain-torch MoE given router logits (what the op receives); it runs
the same steps as `plugins.moe.reference.moe` after its router matmul, so both agree bit for bit.
`check_moe_inputs` is the one check of the activations, logits and top_k that every implementation runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from plugins.checks import check_one_device
from plugins.formats.mxfp4 import MXFP4_BLOCK, MXFP4_BLOCK_BYTES
from plugins.formats.nvfp4 import NVFP4_BLOCK
from plugins.moe import e2m1_frag, e2m1_spread
from plugins.moe.experts import Bf16Experts, ExpertProjection, ExpertWeights, Mxfp4Experts, Nvfp4Experts
from plugins.moe.reference import expert_mlp


class WeightFormat(str, Enum):
    BF16 = "bf16"
    MXFP4 = "mxfp4"
    NVFP4 = "nvfp4"
    NVFP4_SPREAD = "nvfp4_spread"  # NVFP4 stored in the kernel's own order (`e2m1_spread`)
    NVFP4_FRAG = "nvfp4_frag"      # NVFP4 stored in the Gluon kernel's operand order (`e2m1_frag`)


_NVFP4_FORMATS = (WeightFormat.NVFP4, WeightFormat.NVFP4_SPREAD, WeightFormat.NVFP4_FRAG)
_KERNEL_ORDER = (WeightFormat.NVFP4_SPREAD, WeightFormat.NVFP4_FRAG)  # the kernels' own storages


@dataclass(frozen=True)
class _Layout:
    """One row of the table above, as `ProjectionTensors` reads and checks it."""

    weight: str                             # the weight's layout, for messages
    ndim: int
    in_axis: int                            # the weight axis that counts inputs ...
    per_in: int                             # ... this many per element (2 codes a byte; 32 per MXFP4 block)
    out_axis: int
    block: int = 0                          # inputs per block scale (0: no block scales)
    multiple: int = 0                       # in_features a multiple of this (0: of the block, or any)
    last: int | None = None                 # the weight's last dimension, when fixed (MXFP4: 16 bytes)
    scale: str | None = None                # the block scales' layout, for messages
    scale_dtype: torch.dtype | None = None
    scale_in_first: bool = True             # scales [E, in/block, out] (NVFP4), else [E, out, in/block]

    @property
    def in_multiple(self) -> int:
        return self.multiple or self.block or 1


_NVFP4_LAYOUT = dict(weight="torch.uint8 [E, in/2, out]", ndim=3, in_axis=1, per_in=2, out_axis=2,
                     block=NVFP4_BLOCK, scale="[E, in/16, out]", scale_dtype=torch.float8_e4m3fn)
_LAYOUTS = {
    WeightFormat.BF16: _Layout(weight="[E, in, out] floats", ndim=3, in_axis=1, per_in=1, out_axis=2),
    WeightFormat.MXFP4: _Layout(weight="torch.uint8 [E, out, in/32, 16]", ndim=4, in_axis=2, per_in=MXFP4_BLOCK,
                                out_axis=1, block=MXFP4_BLOCK, last=MXFP4_BLOCK_BYTES, scale="[E, out, in/32]",
                                scale_dtype=torch.uint8, scale_in_first=False),
    WeightFormat.NVFP4: _Layout(**_NVFP4_LAYOUT),
    WeightFormat.NVFP4_SPREAD: _Layout(**_NVFP4_LAYOUT, multiple=e2m1_spread.TAIL),
    WeightFormat.NVFP4_FRAG: _Layout(**_NVFP4_LAYOUT, multiple=e2m1_frag.TAIL),
}


def input_multiple(fmt: WeightFormat) -> int:
    """What a projection's input count must be a multiple of, stored in `fmt`."""
    return _LAYOUTS[fmt].in_multiple


MAX_TOP_K = 8  # experts a token may be routed to (the routing kernel keeps them in registers)
ACTIVATION_DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # x and the kernels' dot dtypes
ROW_ALIGN = 16  # bytes: rows of the FP4 codes and block scales start on this boundary (`aligned_rows`)


def aligned_rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., L] as a view whose last axis is contiguous and whose rows start every multiple of
    ROW_ALIGN bytes (zero padding past L); x itself when it already is (and starts aligned)."""
    n = x.shape[-1]
    per_row = ROW_ALIGN // x.element_size()
    aligned = (x.stride(-1) == 1 and all(st % per_row == 0 for st in x.stride()[:-1])
               and x.data_ptr() % ROW_ALIGN == 0)
    if aligned:
        return x
    buf = x.new_zeros(*x.shape[:-1], -(-n // per_row) * per_row)
    buf[..., :n] = x
    return buf[..., :n]


@dataclass(frozen=True)
class ProjectionTensors:
    """One projection of all experts (gate_up: H -> 2I interleaved, or down: I -> H)."""

    fmt: WeightFormat
    weight: torch.Tensor
    scale: torch.Tensor | None = None
    global_scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        needs_scale = self.fmt is not WeightFormat.BF16
        if needs_scale != (self.scale is not None):
            raise ValueError(f"{self.fmt.value} projection: scale must be "
                             f"{'given' if needs_scale else 'None'}")
        if (self.fmt in _NVFP4_FORMATS) != (self.global_scale is not None):
            raise ValueError(f"{self.fmt.value} projection: global_scale is required for nvfp4 only")
        self._check_layout()

    def _check_layout(self) -> None:
        """Shapes, dtypes and device as `_LAYOUTS` says: the kernels index these tensors unchecked."""
        fmt, w, s, gs, layout = self.fmt, self.weight, self.scale, self.global_scale, _LAYOUTS[self.fmt]
        what = f"{fmt.value} projection"
        dtype_ok = w.is_floating_point() if fmt is WeightFormat.BF16 else w.dtype == torch.uint8
        if w.ndim != layout.ndim or not dtype_ok or layout.last not in (None, w.shape[-1]):
            raise ValueError(f"{what}: weight must be {layout.weight}, got {w.dtype} {tuple(w.shape)}")
        if self.in_features % layout.in_multiple:
            raise ValueError(f"{what}: {self.in_features} inputs must be a multiple of {layout.in_multiple}"
                             + ("; keep such a layer in nvfp4 (k_major(spread=False))"
                                if fmt in _KERNEL_ORDER else ""))
        if fmt is WeightFormat.NVFP4_FRAG and self.out_features % e2m1_frag.ROWS:
            raise ValueError(f"{what}: {self.out_features} outputs must be a multiple of {e2m1_frag.ROWS}; keep "
                             "such a layer in nvfp4_spread (k_major(spread=True))")
        if s is not None and (s.dtype != layout.scale_dtype or tuple(s.shape) != self.scale_shape):
            raise ValueError(f"{what}: scale must be {layout.scale_dtype} {layout.scale} = {self.scale_shape}, "
                             f"got {s.dtype} {tuple(s.shape)}")
        if gs is not None and (gs.dtype != torch.float32 or gs.numel() != 1):
            raise ValueError(f"{what}: global_scale must be a torch.float32 scalar, got {gs.dtype} "
                             f"{tuple(gs.shape)}")
        if fmt in _KERNEL_ORDER and not (w.is_contiguous() and s.is_contiguous()):
            raise ValueError(f"{what}: weight and scale must be contiguous (the chunk-major storage "
                             "`k_major(spread=True)` or `k_major(frag=True)` writes)")
        check_one_device(what, {"weight": w, "scale": s, "global_scale": gs})

    @property
    def num_experts(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        layout = _LAYOUTS[self.fmt]
        return self.weight.shape[layout.in_axis] * layout.per_in

    @property
    def out_features(self) -> int:
        return self.weight.shape[_LAYOUTS[self.fmt].out_axis]

    @property
    def scale_shape(self) -> tuple[int, ...] | None:
        """The block scales' shape these weights need (None: BF16, no scales)."""
        layout = _LAYOUTS[self.fmt]
        if not layout.block:
            return None
        e, blocks, out = self.weight.shape[0], self.in_features // layout.block, self.out_features
        return (e, blocks, out) if layout.scale_in_first else (e, out, blocks)

    @property
    def nbytes(self) -> int:
        """Bytes of weights and block scales (what a weight-streaming kernel must read)."""
        return sum(t.numel() * t.element_size() for t in (self.weight, self.scale) if t is not None)

    def k_major(self, spread: bool = False, frag: bool = False) -> ProjectionTensors:
        """The same logical tensors stored input-fastest, each output row starting on a 16-byte boundary
        (a one-time copy; tensors already so stored are kept). The kernels accept any strides; with
        this storage each thread's bytes are adjacent along the input axis (the layout the tensor-core
        operand wants) and the weight and scale tiles load in wide vectors that Triton pipelines.
        spread (NVFP4): the kernel's own storage instead (`nvfp4_spread`: [E, in/x, out] contiguous tensors,
        codes and block scales reordered along the input axis and chunk-major across output rows; a 40%
        shorter K loop on sm_90 with bf16 activations and contiguous weight tiles, same results; H and I
        multiples of 64; see `plugins.moe.e2m1_spread`). frag (NVFP4): the Hopper Gluon kernel's storage
        (`nvfp4_frag`, `plugins.moe.e2m1_frag`; outputs a multiple of 64 too). The kernels' own storages are
        kept as they are."""
        if self.fmt in (WeightFormat.BF16, *_KERNEL_ORDER):
            return self
        if self.fmt is WeightFormat.MXFP4:
            return ProjectionTensors(self.fmt, self.weight, aligned_rows(self.scale))
        fmt, weight, scale = self.fmt, self.weight, self.scale
        if frag and fmt is WeightFormat.NVFP4:
            e2m1_spread.check_global_scale(float(self.global_scale), "nvfp4 projection: global_scale")
            return ProjectionTensors(WeightFormat.NVFP4_FRAG, e2m1_frag.store_codes(weight.mT),
                                     e2m1_frag.store_scales(scale.mT), self.global_scale)
        if spread and fmt is WeightFormat.NVFP4:
            e2m1_spread.check_global_scale(float(self.global_scale), "nvfp4 projection: global_scale")
            return ProjectionTensors(WeightFormat.NVFP4_SPREAD, e2m1_spread.store_codes(weight.mT),
                                     e2m1_spread.store_scales(scale.mT), self.global_scale)
        return ProjectionTensors(fmt, aligned_rows(weight.mT).mT, aligned_rows(scale.mT).mT, self.global_scale)

    def to_experts(self) -> ExpertProjection:
        if self.fmt is WeightFormat.BF16:
            return Bf16Experts(self.weight)
        if self.fmt is WeightFormat.MXFP4:
            return Mxfp4Experts(self.weight, self.scale)
        if self.fmt is WeightFormat.NVFP4_SPREAD:
            return Nvfp4Experts(e2m1_spread.load_codes(self.weight).mT, e2m1_spread.load_scales(self.scale).mT,
                                self.global_scale)
        if self.fmt is WeightFormat.NVFP4_FRAG:
            return Nvfp4Experts(e2m1_frag.load_codes(self.weight).mT, e2m1_frag.load_scales(self.scale).mT,
                                self.global_scale)
        return Nvfp4Experts(self.weight, self.scale, self.global_scale)

    @classmethod
    def from_experts(cls, proj: ExpertProjection) -> ProjectionTensors:
        if isinstance(proj, Bf16Experts):
            return cls(WeightFormat.BF16, proj.weight)
        if isinstance(proj, Mxfp4Experts):
            return cls(WeightFormat.MXFP4, proj.blocks, proj.scales)
        if isinstance(proj, Nvfp4Experts):
            if proj.act_scale is not None:
                raise ValueError("the trtkit MoE kernels are weight-only (BF16 activations); "
                                 "W4A4 emulation (act_scale) runs on the reference path only")
            return cls(WeightFormat.NVFP4, proj.packed, proj.block_scale, proj.global_scale)
        raise ValueError(f"unsupported expert projection type {type(proj).__name__}")


@dataclass(frozen=True)
class MoeTensors:
    """Both projections and their biases; shapes checked once here."""

    gate_up: ProjectionTensors
    gate_up_bias: torch.Tensor  # [E, 2I]
    down: ProjectionTensors
    down_bias: torch.Tensor     # [E, H]

    def __post_init__(self) -> None:
        e, h = self.gate_up.num_experts, self.gate_up.in_features
        two_i = self.gate_up.out_features
        want = {"gate_up out (2I)": (two_i, 2 * self.down.in_features),
                "down out (H)": (self.down.out_features, h),
                "down experts": (self.down.num_experts, e),
                "gate_up_bias": (tuple(self.gate_up_bias.shape), (e, two_i)),
                "down_bias": (tuple(self.down_bias.shape), (e, h))}
        bad = [f"{k}: {got} != {exp}" for k, (got, exp) in want.items() if got != exp]
        if bad:
            raise ValueError("MoE tensors do not form one layer: " + "; ".join(bad))
        check_one_device("MoE tensors", {"gate_up": self.gate_up.weight, "gate_up_bias": self.gate_up_bias,
                                         "down": self.down.weight, "down_bias": self.down_bias})

    @classmethod
    def from_weights(cls, w: ExpertWeights) -> MoeTensors:
        return cls(ProjectionTensors.from_experts(w.gate_up), w.gate_up_bias,
                   ProjectionTensors.from_experts(w.down), w.down_bias)

    def k_major(self, spread: bool = False, frag: bool = False) -> MoeTensors:
        return MoeTensors(self.gate_up.k_major(spread, frag), self.gate_up_bias, self.down.k_major(spread, frag),
                          self.down_bias)

    def to_weights(self) -> ExpertWeights:
        return ExpertWeights(self.gate_up.to_experts(), self.gate_up_bias, self.down.to_experts(),
                             self.down_bias)


def check_top_k(top_k: int, num_experts: int, what: str = "moe") -> None:
    if not 1 <= top_k <= min(num_experts, MAX_TOP_K):
        raise ValueError(f"{what}: top_k={top_k} must be in [1, min(E={num_experts}, {MAX_TOP_K})]")


def check_moe_inputs(x: torch.Tensor, logits: torch.Tensor, t: MoeTensors, top_k: int) -> None:
    """x [N, H] and router logits [N, E] that fit the experts t, and a top_k they can route; one
    ValueError naming the first argument that does not (every implementation of trtkit::moe calls this)."""
    e, h = t.gate_up.num_experts, t.gate_up.in_features
    n = x.shape[0] if x.ndim == 2 else "N"
    if x.ndim != 2 or x.shape[1] != h or x.dtype not in ACTIVATION_DTYPES:
        dtypes = "/".join(str(d).removeprefix("torch.") for d in ACTIVATION_DTYPES)
        raise ValueError(f"moe: x must be [N, {h}] {dtypes}, got {x.dtype} {tuple(x.shape)}")
    if tuple(logits.shape) != (n, e) or not logits.is_floating_point():
        raise ValueError(f"moe: router logits {tuple(logits.shape)} {logits.dtype} must be [N, E] = [{n}, {e}] "
                         "floats (a row per token of x, a column per expert)")
    check_top_k(top_k, e)
    check_one_device("moe", {"x": x, "router logits": logits, "experts": t.gate_up.weight})


def reference_moe_from_logits(x: torch.Tensor, logits: torch.Tensor, experts: ExpertWeights, top_k: int,
                              limit: float, alpha: float) -> torch.Tensor:
    """x [N, H], router logits [N, E] -> [N, H]; `plugins.moe.reference.moe` after its router matmul."""
    top, chosen = torch.topk(logits, top_k, dim=-1)                   # [N, k] each
    weights = torch.softmax(top, dim=-1)
    out = torch.zeros_like(x)                                         # [N, H]
    for e in torch.unique(chosen).tolist():
        token, slot = torch.where(chosen == e)                        # [n] each
        y = expert_mlp(x[token], e, experts, limit, alpha)            # [n, H]
        out.index_add_(0, token, (y * weights[token, slot, None]).to(x.dtype))
    return out
