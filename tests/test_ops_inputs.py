"""Bad inputs to the plugins' public API (the ops trtkit::moe / trtkit::attention, their drop-ins, the
Triton launchers under the interpreter, plugins.moe.tensors): each is refused with one ValueError that
names the argument, the same on every path (CPU reference, fake, Triton), or gives the reference's
result (empty batches)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_custom_ops import layer

import plugins.ops as ops
from plugins.moe.fused import fused_moe
from plugins.moe.tensors import MoeTensors

N, H, E = 6, 64, 4


def moe_paths():
    """(name, call(x, logits, t, top_k)) for every implementation of trtkit::moe reachable on CPU."""
    def op(x, logits, t, k):
        return torch.ops.trtkit.moe(x, logits, *ops.moe_op_args(t), k, 7.0, 1.702)

    def fake(x, logits, t, k):
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode(allow_non_fake_inputs=True):
            return op(x, logits, t, k)

    return [("op", op), ("fake", fake), ("fused", lambda x, logits, t, k: fused_moe(x, logits, t, k))]


def moe_inputs(fmt: str = "mxfp4"):
    router, experts = layer(fmt, e=E, h=H)
    x = torch.randn(N, H, generator=torch.Generator().manual_seed(1))
    return x, F.linear(x, router.weight, router.bias), MoeTensors.from_weights(experts)


MOE_BAD = {  # name: (change to (x, logits, t, top_k), message)
    "x hidden size": (lambda x, lg, t, k: (x[:, :32], lg, t, k), r"x must be \[N, 64\]"),
    "x 3-d": (lambda x, lg, t, k: (x[None], lg, t, k), r"x must be \[N, 64\]"),
    "x int": (lambda x, lg, t, k: (x.to(torch.int32), lg, t, k), r"x must be .*got torch.int32"),
    "x float64": (lambda x, lg, t, k: (x.double(), lg.double(), t, k), r"x must be .*got torch.float64"),
    "logits too few experts": (lambda x, lg, t, k: (x, lg[:, :3], t, k), r"router logits \(6, 3\) torch.float32 must be \[N, E\] = \[6, 4\]"),
    "logits too many experts": (lambda x, lg, t, k: (x, torch.randn(N, 5), t, k), r"router logits \(6, 5\)"),
    "logits too few tokens": (lambda x, lg, t, k: (x, lg[:5], t, k), r"router logits \(5, 4\)"),
    "logits int": (lambda x, lg, t, k: (x, lg.long(), t, k), r"router logits \(6, 4\) torch.int64"),
    "top_k 0": (lambda x, lg, t, k: (x, lg, t, 0), r"top_k=0 must be in \[1, min\(E=4, 8\)\]"),
    "top_k -1": (lambda x, lg, t, k: (x, lg, t, -1), r"top_k=-1"),
    "top_k > E": (lambda x, lg, t, k: (x, lg, t, 5), r"top_k=5"),
    "logits on another device": (lambda x, lg, t, k: (x, lg.to("meta"), t, k), r"router logits on meta"),
}


@pytest.mark.parametrize("path", [p for p, _ in moe_paths()])
@pytest.mark.parametrize("case", list(MOE_BAD))
def test_moe_rejects_bad_inputs_on_every_path(case, path):
    change, message = MOE_BAD[case]
    run = dict(moe_paths())[path]
    x, logits, t = moe_inputs()
    with pytest.raises(ValueError, match=message):
        run(*change(x, logits, t, 2))


@pytest.mark.parametrize("fmt", ["bf16", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("path", [p for p, _ in moe_paths()])
def test_moe_of_no_tokens_is_empty(path, fmt):
    x, logits, t = moe_inputs(fmt)
    out = dict(moe_paths())[path](x[:0], logits[:0], t, 2)
    assert out.shape == (0, H) and out.dtype == x.dtype
