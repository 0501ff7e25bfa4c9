"""The model spec: one frozen dataclass, built from a checkpoint's own config.json.

Both config dialects are read: transformers 4.x (`rope_theta` + `rope_scaling`) and 5.x
(`rope_parameters`, which carries `rope_theta` inside). Configs we emit carry both forms, because
TensorRT-LLM and transformers 4.x read only the legacy keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import CheckpointError, UnsupportedArchitecture

SUPPORTED_ARCHITECTURES = ("GptOssForCausalLM",)
SUPPORTED_MODEL_TYPES = ("gpt_oss",)
LAYER_TYPES = ("sliding_attention", "full_attention")
MX_BLOCK = 32  # MXFP4 block along the input dimension; hidden and intermediate must be multiples


@dataclass(frozen=True)
class RopeSpec:
    """YaRN rotary embedding parameters (gpt-oss: theta 150000, factor 32 over 4096 positions)."""

    theta: float
    rope_type: str = "yarn"
    factor: float = 1.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = False

    @property
    def concentration(self) -> float:
        """YaRN attention scaling `0.1*ln(factor)+1`; multiplies both cos and sin."""
        return 0.1 * math.log(self.factor) + 1.0 if self.factor > 1.0 else 1.0

    def scaling_dict(self) -> dict[str, Any]:
        """The legacy `rope_scaling` mapping (transformers 4.x, TensorRT-LLM)."""
        return {
            "rope_type": self.rope_type,
            "factor": self.factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "beta_fast": self.beta_fast,
            "beta_slow": self.beta_slow,
            "truncate": self.truncate,
        }

    def parameters_dict(self) -> dict[str, Any]:
        """The transformers 5.x `rope_parameters` mapping."""
        return {**self.scaling_dict(), "rope_theta": self.theta}


@dataclass(frozen=True)
class ModelSpec:
    """Every shape fact about a gpt-oss checkpoint. Derived values are properties."""

    num_hidden_layers: int
    num_local_experts: int
    num_experts_per_tok: int
    hidden_size: int
    intermediate_size: int  # per expert
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    sliding_window: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope: RopeSpec
    layer_types: tuple[str, ...]
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    architecture: str = "GptOssForCausalLM"
    raw_config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        def bad(fld: str, why: str) -> CheckpointError:
            return CheckpointError(f"config.json: field {fld}={getattr(self, fld)!r} {why}")

        for name in ("num_hidden_layers", "num_local_experts", "num_experts_per_tok", "hidden_size",
                     "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                     "vocab_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise bad(name, "must be a positive integer")
        if self.num_experts_per_tok > self.num_local_experts:
            raise bad("num_experts_per_tok", f"exceeds num_local_experts={self.num_local_experts}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise bad("num_attention_heads",
                      f"is not a multiple of num_key_value_heads={self.num_key_value_heads} (GQA)")
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % MX_BLOCK:
                raise bad(name, f"must be a multiple of {MX_BLOCK} (MXFP4/NVFP4 blocks run along it)")
        if len(self.layer_types) != self.num_hidden_layers:
            raise bad("layer_types", f"has {len(self.layer_types)} entries for "
                      f"num_hidden_layers={self.num_hidden_layers}")
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise bad("layer_types", f"has unknown entries {unknown}; allowed: {list(LAYER_TYPES)}")

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def gqa_ratio(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == "sliding_attention"

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: dict[str, Any], source: str = "config.json") -> ModelSpec:
        archs = cfg.get("architectures") or []
        model_type = cfg.get("model_type")
        if not any(a in SUPPORTED_ARCHITECTURES for a in archs) and model_type not in SUPPORTED_MODEL_TYPES:
            found = ",".join(archs) or model_type or "none"
            raise UnsupportedArchitecture(
                f"{source}: unsupported architecture {found}; supported: "
                f"{', '.join(SUPPORTED_ARCHITECTURES)} (model_type {', '.join(SUPPORTED_MODEL_TYPES)})")

        def need(key: str) -> Any:
            if key not in cfg:
                raise CheckpointError(f"{source}: missing field {key!r} required for gpt-oss")
            return cfg[key]

        layers = int(need("num_hidden_layers"))
        layer_types = cfg.get("layer_types") or [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        experts = cfg.get("num_local_experts", cfg.get("num_experts"))
        if experts is None:
            raise CheckpointError(f"{source}: missing field 'num_local_experts' required for gpt-oss")
        top_k = cfg.get("num_experts_per_tok", cfg.get("experts_per_token"))
        if top_k is None:
            raise CheckpointError(f"{source}: missing field 'num_experts_per_tok' required for gpt-oss")
        heads = int(need("num_attention_heads"))
        return cls(
            num_hidden_layers=layers,
            num_local_experts=int(experts),
            num_experts_per_tok=int(top_k),
            hidden_size=int(need("hidden_size")),
            intermediate_size=int(need("intermediate_size")),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or need("hidden_size") // heads),
            vocab_size=int(need("vocab_size")),
            sliding_window=int(cfg.get("sliding_window") or 128),
            max_position_embeddings=int(need("max_position_embeddings")),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope=_rope_from_config(cfg, source),
            layer_types=tuple(layer_types),
            swiglu_limit=float(cfg.get("swiglu_limit", 7.0)),
            attention_bias=bool(cfg.get("attention_bias", True)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            architecture=SUPPORTED_ARCHITECTURES[0],
            raw_config=dict(cfg),
        )

    @classmethod
    def from_dir(cls, folder: str | Path) -> ModelSpec:
        return cls.from_config(read_config(folder), source=str(Path(folder) / "config.json"))

    def to_config(self) -> dict[str, Any]:
        """A complete gpt-oss config.json (both rope dialects), as the Hugging Face release writes it."""
        return {
            "architectures": [self.architecture],
            "model_type": "gpt_oss",
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "eos_token_id": self.raw_config.get("eos_token_id", 200002),
            "pad_token_id": self.raw_config.get("pad_token_id", 199999),
            "experts_per_token": self.num_experts_per_tok,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.rope.original_max_position_embeddings,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": list(self.layer_types),
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_local_experts,
            "output_router_logits": False,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "rope_scaling": self.rope.scaling_dict(),
            "rope_parameters": self.rope.parameters_dict(),
            "router_aux_loss_coef": 0.9,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }


def with_legacy_rope(cfg: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """Return `cfg` with `rope_theta`/`rope_scaling` present (and `rope_parameters` consistent)."""
    out = dict(cfg)
    out["rope_theta"] = spec.rope.theta
    out["rope_scaling"] = spec.rope.scaling_dict()
    if "rope_parameters" in cfg:
        out["rope_parameters"] = spec.rope.parameters_dict()
    return out


def read_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; a checkpoint folder needs its Hugging Face config.json")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); restore the file from the source") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: top level must be a JSON object")
    return cfg


def _rope_from_config(cfg: dict[str, Any], source: str) -> RopeSpec:
    params = cfg.get("rope_parameters")
    legacy = cfg.get("rope_scaling")
    if isinstance(params, dict) and params:
        rope = dict(params)
        theta = rope.pop("rope_theta", cfg.get("rope_theta"))
    else:
        rope = dict(legacy or {})
        theta = cfg.get("rope_theta")
    if theta is None:
        raise CheckpointError(f"{source}: missing 'rope_theta' (legacy) or 'rope_parameters.rope_theta' (5.x)")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("yarn", "default"):
        raise CheckpointError(f"{source}: rope_type {rope_type!r} unsupported for gpt-oss; expected 'yarn'")
    return RopeSpec(
        theta=float(theta),
        rope_type=rope_type,
        factor=float(rope.get("factor", 1.0)),
        original_max_position_embeddings=int(rope.get("original_max_position_embeddings",
                                                      cfg.get("initial_context_length", 4096))),
        beta_fast=float(rope.get("beta_fast", 32.0)),
        beta_slow=float(rope.get("beta_slow", 1.0)),
        truncate=bool(rope.get("truncate", True)),  # absent: truncated, as transformers reads it
    )
