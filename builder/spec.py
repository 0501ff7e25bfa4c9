"""The model spec: one frozen dataclass, built from a checkpoint's own config.json.

Both config dialects are read: transformers 4.x (`rope_theta` + `rope_scaling`) and 5.x
(`rope_parameters`, which carries `rope_theta` inside). Configs we emit carry both forms, because
TensorRT-LLM and transformers 4.x read only the legacy keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import CheckpointError, UnsupportedArchitecture
from builder.numbers import finite

SUPPORTED_ARCHITECTURES = ("GptOssForCausalLM",)
SUPPORTED_MODEL_TYPES = ("gpt_oss",)
LAYER_TYPES = ("sliding_attention", "full_attention")
MX_BLOCK = 32  # MXFP4 block along the input dimension; hidden and intermediate must be multiples


@dataclass(frozen=True)
class Kind:
    """What a config.json value must be: its JSON types (a boolean is never a number) and its range."""

    expected: str
    types: tuple[type, ...]
    in_range: Callable[[Any], bool] = lambda v: True
    convert: Callable[[Any], Any] = lambda v: v


POSITIVE_INT = Kind("a positive JSON integer (no quotes, no fraction)", (int,), lambda v: v > 0)
POSITIVE_NUMBER = Kind("a finite JSON number > 0 (no quotes)", (int, float),
                       lambda v: finite(v) and v > 0, float)
BOOLEAN = Kind("true or false (no quotes)", (bool,))

# config.json fields (and the keys of rope_scaling / rope_parameters) -> what each must be
CONFIG_FIELDS: dict[str, Kind] = {
    **dict.fromkeys(("num_hidden_layers", "num_local_experts", "num_experts", "num_experts_per_tok",
                     "experts_per_token", "hidden_size", "intermediate_size", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "vocab_size", "sliding_window",
                     "max_position_embeddings", "initial_context_length",
                     "original_max_position_embeddings"), POSITIVE_INT),
    **dict.fromkeys(("rms_norm_eps", "swiglu_limit", "rope_theta", "factor", "beta_fast", "beta_slow"),
                    POSITIVE_NUMBER),
    **dict.fromkeys(("attention_bias", "tie_word_embeddings", "truncate"), BOOLEAN),
}
_REQUIRED = object()


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class ConfigFields:
    """Typed reads of one JSON object of config.json, checked against CONFIG_FIELDS."""

    values: Mapping[str, Any]
    source: str
    prefix: str = ""  # "rope_scaling." for a nested object, so errors name the full field

    def get(self, *keys: str, default: Any = _REQUIRED) -> Any:
        """The first of `keys` (a field and its aliases) that is present, checked; absent (or null,
        when the field is optional) -> `default`; absent and required -> an error naming the field."""
        for key in keys:
            value = self.values.get(key)
            if value is None and default is not _REQUIRED:
                continue
            if key in self.values:
                return self.check(key, value)
        if default is _REQUIRED:
            raise CheckpointError(f"{self.source}: missing field {self.prefix + keys[0]!r} required for gpt-oss")
        return default

    def check(self, key: str, value: Any) -> Any:
        kind = CONFIG_FIELDS[key]
        typed = isinstance(value, kind.types) and (bool in kind.types or not isinstance(value, bool))
        if not (typed and kind.in_range(value)):
            raise CheckpointError(f"{self.source}: field {self.prefix + key!r} is {_shown(value)}; expected "
                                  f"{kind.expected}; correct it in config.json")
        return kind.convert(value)


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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
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
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise CheckpointError(f"{source}: field 'architectures' is {_shown(archs)}; expected a JSON list "
                                  f"of class names such as [\"{SUPPORTED_ARCHITECTURES[0]}\"]")
        model_type = cfg.get("model_type")
        if not any(a in SUPPORTED_ARCHITECTURES for a in archs) and model_type not in SUPPORTED_MODEL_TYPES:
            found = ",".join(archs) or model_type or "none"
            raise UnsupportedArchitecture(
                f"{source}: unsupported architecture {found}; supported: "
                f"{', '.join(SUPPORTED_ARCHITECTURES)} (model_type {', '.join(SUPPORTED_MODEL_TYPES)})")
        if model_type is not None and model_type not in SUPPORTED_MODEL_TYPES:  # loaders pick the class by it
            raise UnsupportedArchitecture(
                f"{source}: model_type {_shown(model_type)} contradicts architectures {','.join(archs)}; "
                f"gpt-oss configs say model_type \"{SUPPORTED_MODEL_TYPES[0]}\" (transformers and TensorRT-LLM "
                "choose the model class by it); correct config.json")

        f = ConfigFields(cfg, source)
        layers = f.get("num_hidden_layers")
        heads = f.get("num_attention_heads")
        hidden = f.get("hidden_size")
        return cls(
            num_hidden_layers=layers,
            num_local_experts=f.get("num_local_experts", "num_experts"),
            num_experts_per_tok=f.get("num_experts_per_tok", "experts_per_token"),
            hidden_size=hidden,
            intermediate_size=f.get("intermediate_size"),
            num_attention_heads=heads,
            num_key_value_heads=f.get("num_key_value_heads", default=heads),
            head_dim=f.get("head_dim", default=hidden // heads),
            vocab_size=f.get("vocab_size"),
            sliding_window=f.get("sliding_window", default=128),
            max_position_embeddings=f.get("max_position_embeddings"),
            rms_norm_eps=f.get("rms_norm_eps", default=1e-5),
            rope=_rope_from_config(cfg, source),
            layer_types=_layer_types(cfg, layers, source),
            swiglu_limit=f.get("swiglu_limit", default=7.0),
            attention_bias=f.get("attention_bias", default=True),
            tie_word_embeddings=f.get("tie_word_embeddings", default=False),
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


def _layer_types(cfg: dict[str, Any], layers: int, source: str) -> tuple[str, ...]:
    """`layer_types` as given (a list of names, checked against LAYER_TYPES later), or alternating."""
    given = cfg.get("layer_types")
    if given is None or given == []:
        return tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers))
    if not isinstance(given, list) or not all(isinstance(t, str) for t in given):
        raise CheckpointError(f"{source}: field 'layer_types' is {_shown(given)}; expected a JSON list of "
                              f"{' / '.join(LAYER_TYPES)} strings, one per layer; correct it in config.json")
    return tuple(given)


def _rope_from_config(cfg: dict[str, Any], source: str) -> RopeSpec:
    params = cfg.get("rope_parameters")
    legacy = cfg.get("rope_scaling")
    for key, value in (("rope_parameters", params), ("rope_scaling", legacy)):
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{source}: field {key!r} is {_shown(value)}; expected a JSON object "
                                  "(YaRN parameters) or null; correct it in config.json")
    if params:
        rope = ConfigFields(params, source, "rope_parameters.")
        theta = rope.get("rope_theta", default=None)
        if theta is None:
            theta = ConfigFields(cfg, source).get("rope_theta", default=None)
    else:
        rope = ConfigFields(legacy or {}, source, "rope_scaling.")
        theta = ConfigFields(cfg, source).get("rope_theta", default=None)
    if theta is None:
        raise CheckpointError(f"{source}: missing 'rope_theta' (legacy) or 'rope_parameters.rope_theta' (5.x)")
    rope_type = rope.values.get("rope_type", rope.values.get("type", "default"))
    if rope_type not in ("yarn", "default"):
        raise CheckpointError(f"{source}: rope_type {rope_type!r} unsupported for gpt-oss; expected 'yarn'")
    context = ConfigFields(cfg, source).get("initial_context_length", default=4096)
    return RopeSpec(
        theta=theta,
        rope_type=rope_type,
        factor=rope.get("factor", default=1.0),
        original_max_position_embeddings=rope.get("original_max_position_embeddings", default=context),
        beta_fast=rope.get("beta_fast", default=32.0),
        beta_slow=rope.get("beta_slow", default=1.0),
        truncate=rope.get("truncate", default=True),  # absent: truncated, as transformers reads it
    )
