"""Plain-torch reference of the gpt-oss MoE block: top-k routing, interleaved clamped SwiGLU, and
per-expert projections decoded on the fly (only the experts some token was routed to).

Shapes: N tokens, H hidden, I intermediate per expert, E experts, k experts per token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from plugins.moe.experts import ExpertWeights, Router

# on_expert_input(proj_name, expert, x): the activations entering one expert projection, before any
# activation quantization. proj_name is "gate_up_proj" (x [n, H]) or "down_proj" (x [n, I]).
ExpertInputHook = Callable[[str, int, torch.Tensor], None]


def route(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, top_k: int
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, H], w [E, H], b [E] -> (weights [N, k], experts [N, k]): the k largest router logits,
    softmax over those k only."""
    logits = F.linear(x, w, b)                                        # [N, E]
    top, experts = torch.topk(logits, top_k, dim=-1)                  # [N, k] each
    return torch.softmax(top, dim=-1), experts


def swiglu(gate_up: torch.Tensor, limit: float = 7.0, alpha: float = 1.702) -> torch.Tensor:
    """[..., 2I] interleaved (gate = even, up = odd) -> [..., I]:
    clamp(gate, max=limit) * sigmoid(alpha * clamp(gate, max=limit)) * (clamp(up, -limit, limit) + 1)."""
    gate = gate_up[..., 0::2].clamp(max=limit)                        # [..., I]
    up = gate_up[..., 1::2].clamp(min=-limit, max=limit)              # [..., I]
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


def expert_mlp(x: torch.Tensor, e: int, experts: ExpertWeights, limit: float, alpha: float,
               hook: ExpertInputHook | None = None) -> torch.Tensor:
    """Expert e on its routed tokens x [n, H] -> [n, H], weights decoded to x's dtype."""
    dtype = x.dtype
    if hook is not None:
        hook("gate_up_proj", e, x)
    gate_up = (experts.gate_up.prepare_input(x) @ experts.gate_up.expert(e, dtype)
               + experts.gate_up_bias[e].to(dtype))                   # [n, 2I]
    act = swiglu(gate_up, limit, alpha)                               # [n, I]
    if hook is not None:
        hook("down_proj", e, act)
    return (experts.down.prepare_input(act) @ experts.down.expert(e, dtype)
            + experts.down_bias[e].to(dtype))                         # [n, H]


def moe(x: torch.Tensor, router: Router, experts: ExpertWeights, top_k: int, limit: float = 7.0,
        alpha: float = 1.702, *, on_expert_input: ExpertInputHook | None = None) -> torch.Tensor:
    """x [N, H] -> [N, H]: each token's top-k experts, combined with the routing weights. Experts run
    in ascending order and accumulate with index_add_ (the order transformers uses)."""
    weights, chosen = route(x, router.weight.to(x.dtype), router.bias.to(x.dtype), top_k)  # [N, k]
    out = torch.zeros_like(x)                                         # [N, H]
    for e in torch.unique(chosen).tolist():                           # only experts with tokens
        token, slot = torch.where(chosen == e)                        # [n] each
        y = expert_mlp(x[token], e, experts, limit, alpha, on_expert_input)  # [n, H]
        out.index_add_(0, token, (y * weights[token, slot, None]).to(x.dtype))
    return out
