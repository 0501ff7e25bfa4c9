"""`TrtkitMoE`: one gpt-oss MoE layer's NVFP4 experts as a torch module over `trtkit::moe`, loaded from the
tensors of a Model Optimizer NVFP4 checkpoint (`model.layers.N.mlp.experts.*`, prefix stripped, layouts
untouched: see the shared reference nvfp4-gptoss-layout.md). The TensorRT-LLM out-of-tree model
(`plugins.trtllm.trtllm_gptoss`) builds it in place of TensorRT-LLM's own MoE; it needs no TensorRT-LLM itself,
so its loading is tested on CPU.

Storage: codes [E, out, in/2] u8 and block scales [E, out, in/16] E4M3, input-fastest with every row
starting on a 16-byte boundary (`ProjectionTensors.k_major`: the layout the kernel decodes and
pipelines best); the scale rows are allocated padded and sliced when the kernel is called. With
`spread=True` (the default where hidden and intermediate sizes are multiples of 64, as gpt-oss's are) the
experts are stored in the kernel's own order instead (`k_major(spread=True)`, weight format `nvfp4_spread`,
[E, in/x, out] tensors whose bytes are reordered along the input axis and chunk-major across output rows:
a 40% shorter K loop on sm_90 and contiguous weight tiles, see `plugins.moe.e2m1_spread` and
BENCHMARKS.md). On a Hopper GPU whose Triton has Gluon (`frag=None`: `plugins.moe.e2m1_frag.frag_available`) the
default is `nvfp4_frag` instead (`k_major(frag=True)`, same shapes, bytes in the tensor-core operand order of
the Gluon kernel `plugins.moe.gluon_frag`: 0.71-0.93 of the copy bandwidth from batch 8 on an H100, against
0.55-0.73 for spread). TensorRT-LLM's model takes the storage from TRTKIT_MOE_STORAGE (auto, frag, spread or
kmajor; `plugins.trtllm.trtllm_gptoss.modeling`).
"""

from __future__ import annotations

import torch

import plugins.ops  # registers torch.ops.trtkit.moe
from plugins.moe import e2m1_frag, e2m1_spread
from plugins.moe.tensors import (
    ROW_ALIGN,
    MoeTensors,
    ProjectionTensors,
    WeightFormat,
    check_top_k,
    input_multiple,
)

PROJECTIONS = ("gate_up_proj", "down_proj")
ROW_TENSORS = ("", "_weight_scale")                  # [E, in/x, out] in the checkpoint, stored [E, out, in/x]
                                                     # (spread: [E, in/x, out], e2m1_spread.store_codes)
SCALAR_TENSORS = ("_weight_scale_2", "_bias")        # kept as they are
IGNORED = ("_input_scale",)                          # W4A4 activation scales: this MoE is weight-only


def _aligned(n: int) -> int:
    return -(-n // ROW_ALIGN) * ROW_ALIGN


def _tensor(value) -> torch.Tensor:
    """A checkpoint value as a tensor: torch tensors as they are (0-d included), lazy slices read whole."""
    return value if isinstance(value, torch.Tensor) else value[:]


def _check_no_nan_scale(scale: torch.Tensor, key: str) -> None:
    """E4M3 block scales [E, out, in/16] hold no NaN (byte 0x7F / 0xFF): NVFP4 writers emit at most 448, and
    the kernel's exact decode has no NaN (it would read 480), so a NaN here is a corrupt file."""
    nan = (scale.view(torch.uint8) & 0x7F) == 0x7F
    if bool(nan.any()):
        e, out, blk = (int(i) for i in nan.nonzero()[0])
        raise ValueError(f"trtkit MoE: mlp.experts.{key} holds a NaN block scale at [{e}, {blk}, {out}] (expert, "
                         "input block, output); the checkpoint is corrupt: re-export it or run trtkit convert again")


class TrtkitMoE(torch.nn.Module):
    """All experts of one layer; forward(x [N, H], router_logits [N, E]) -> [N, H] in x's dtype."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, top_k: int, limit: float,
                 alpha: float, device: torch.device | str | None = None, spread: bool | None = None,
                 frag: bool | None = None):
        super().__init__()
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        sizes_ok = not (hidden % input_multiple(WeightFormat.NVFP4_SPREAD)
                        or intermediate % input_multiple(WeightFormat.NVFP4_SPREAD))
        if frag is None:    # the Gluon kernel's storage where it runs (Hopper) and the sizes allow it
            frag = spread is not False and sizes_ok and e2m1_frag.frag_available(device)
        if spread is None:  # the faster storage wherever the sizes allow it (gpt-oss: 2880 = 45 x 64)
            spread = sizes_ok
        spread = spread or frag  # frag has spread's shapes: [E, in/x, out], chunk-major
        block = input_multiple(WeightFormat.NVFP4_SPREAD if spread else WeightFormat.NVFP4)
        if hidden % block or intermediate % block:
            raise ValueError(f"trtkit MoE: {'spread' if spread else 'nvfp4'} storage needs hidden and intermediate "
                             f"sizes that are multiples of {block}, got {hidden} and {intermediate}"
                             + ("; use spread=False (TensorRT-LLM: TRTKIT_MOE_STORAGE=kmajor)" if spread else ""))
        check_top_k(top_k, num_experts, "trtkit MoE")
        self.top_k, self.limit, self.alpha, self.spread, self.frag = top_k, limit, alpha, spread, frag
        self.device = device
        self.in_features = {"gate_up_proj": hidden, "down_proj": intermediate}
        out = {"gate_up_proj": 2 * intermediate, "down_proj": hidden}
        for name, n_in in self.in_features.items():
            if spread:  # the kernel's storage: [E, in/x, out] shapes, chunk-major bytes (e2m1_spread.store_codes)
                self._param(name, (num_experts, n_in // 2, out[name]), torch.uint8)
                self._param(f"{name}_weight_scale", (num_experts, n_in // 16, out[name]), torch.float8_e4m3fn)
            else:
                self._param(name, (num_experts, out[name], _aligned(n_in // 2)), torch.uint8)
                self._param(f"{name}_weight_scale", (num_experts, out[name], _aligned(n_in // 16)),
                            torch.float8_e4m3fn)
            self._param(f"{name}_weight_scale_2", (), torch.float32)
            self._param(f"{name}_bias", (num_experts, out[name]), torch.bfloat16)

    def _param(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        data = torch.zeros(shape, dtype=torch.uint8 if dtype.itemsize == 1 else dtype, device=self.device)
        self.register_parameter(name, torch.nn.Parameter(data.view(dtype), requires_grad=False))

    def load_weights(self, weights: list[dict]) -> None:
        """weights[0]: this layer's `mlp.experts.*` tensors by checkpoint name (TensorRT-LLM's loader hands
        a module that is not its own MoE class exactly these, untouched)."""
        w = weights[0]
        unknown = sorted(set(w) - {p + s for p in PROJECTIONS for s in ROW_TENSORS + SCALAR_TENSORS + IGNORED})
        if unknown:
            raise ValueError(f"trtkit MoE: unexpected expert tensors {unknown}; expected the NVFP4 layout "
                             "(gate_up_proj, gate_up_proj_weight_scale, ..._weight_scale_2, ..._bias, down_proj...)")
        for name in PROJECTIONS:
            for suffix in ROW_TENSORS + SCALAR_TENSORS:
                key, p = name + suffix, getattr(self, name + suffix)
                if key not in w:
                    raise ValueError(f"trtkit MoE: checkpoint tensor mlp.experts.{key} is missing")
                src = _tensor(w[key]).to(self.device)
                if suffix in ROW_TENSORS:
                    src = src.mT                                         # [E, out, in/x]
                    n_in = self.in_features[name] // (2 if suffix == "" else 16)
                    want = (p.shape[0], p.shape[2] if self.spread else p.shape[1], n_in)
                    if tuple(src.shape) != want or src.dtype != p.dtype:
                        raise ValueError(f"trtkit MoE: mlp.experts.{key} is {src.dtype} {tuple(w[key].shape)}; "
                                         f"expected {p.dtype} with [E, in/x, out] = {(want[0], want[2], want[1])}")
                    if suffix == "_weight_scale":
                        _check_no_nan_scale(src, key)
                    if self.spread:  # the kernel's storage, an expert at a time
                        storage = e2m1_frag if self.frag else e2m1_spread
                        store = storage.store_codes if suffix == "" else storage.store_scales
                        for e in range(src.shape[0]):
                            p.data[e].copy_(store(src[e]))
                    else:
                        p.data[..., :src.shape[-1]].copy_(src)
                else:
                    if tuple(src.shape) != tuple(p.shape):
                        raise ValueError(f"trtkit MoE: mlp.experts.{key} has shape {tuple(src.shape)}; "
                                         f"expected {tuple(p.shape)}")
                    p.data.copy_(src.to(p.dtype))
        for name in PROJECTIONS if self.spread else ():
            e2m1_spread.check_global_scale(float(getattr(self, f"{name}_weight_scale_2")),
                                           f"trtkit MoE: mlp.experts.{name}_weight_scale_2")

    def tensors(self) -> MoeTensors:
        """The layer as the kernels take it (logical [E, in/x, out] views of the row storage; spread: the
        stored tensors themselves)."""
        proj = {}
        for name, n_in in self.in_features.items():
            codes, scale, gs = (getattr(self, name + s) for s in ("", "_weight_scale", "_weight_scale_2"))
            if self.spread:
                fmt = WeightFormat.NVFP4_FRAG if self.frag else WeightFormat.NVFP4_SPREAD
                proj[name] = ProjectionTensors(fmt, codes, scale, gs)
            else:
                proj[name] = ProjectionTensors(WeightFormat.NVFP4, codes[..., :n_in // 2].mT,
                                               scale[..., :n_in // 16].mT, gs)
        return MoeTensors(proj["gate_up_proj"], self.gate_up_proj_bias, proj["down_proj"], self.down_proj_bias)

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor, **_: object) -> torch.Tensor:
        args = plugins.ops.moe_op_args(self.tensors())
        return torch.ops.trtkit.moe(x, router_logits.to(x.dtype), *args, self.top_k, self.limit, self.alpha)
