"""Model spec: both config dialects, transformers' own configs as the oracle, clear rejections."""

from __future__ import annotations

import json

import pytest

from builder.errors import CheckpointError, UnsupportedArchitecture
from builder.spec import ModelSpec
from builder.synth import SHAPES

YARN = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
        "original_max_position_embeddings": 4096}


def release_20b_config() -> dict:
    """The gpt-oss-20b config.json as published (transformers 4.x dialect)."""
    return {
        "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
        "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02,
        "intermediate_size": 2880,
        "layer_types": ["sliding_attention", "full_attention"] * 12,
        "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
        "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8,
        "num_local_experts": 32, "output_router_logits": False, "pad_token_id": 199999,
        "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn",
                                                           "model.layers.*.mlp.router",
                                                           "model.embed_tokens", "lm_head"],
                                "quant_method": "mxfp4"},
        "rms_norm_eps": 1e-05, "rope_scaling": YARN, "rope_theta": 150000, "router_aux_loss_coef": 0.9,
        "sliding_window": 128, "swiglu_limit": 7.0, "tie_word_embeddings": False,
        "transformers_version": "4.55.0.dev0", "use_cache": True, "vocab_size": 201088,
    }


def test_release_config_matches_builtin_shape():
    spec = ModelSpec.from_config(release_20b_config())
    assert spec == SHAPES["gpt-oss-20b"].spec()
    assert spec.gqa_ratio == 8 and spec.q_dim == 4096 and spec.kv_dim == 512
    assert spec.is_sliding(0) and not spec.is_sliding(1)
    assert spec.rope.concentration == pytest.approx(0.1 * 3.4657359 + 1, rel=1e-6)


def test_v5_rope_parameters_equal_legacy():
    legacy = release_20b_config()
    v5 = dict(legacy)
    del v5["rope_scaling"], v5["rope_theta"]
    v5["rope_parameters"] = {**YARN, "rope_theta": 150000.0}
    assert ModelSpec.from_config(v5) == ModelSpec.from_config(legacy)


@pytest.mark.parametrize("layers", [1, 3])
def test_transformers_configs_both_dialects(layers):
    """transformers' own GptOssConfig (5.x writes rope_parameters) parses to the same spec."""
    from transformers import GptOssConfig

    cfg = GptOssConfig(num_hidden_layers=layers, num_local_experts=8, hidden_size=64,
                       intermediate_size=96, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
                       vocab_size=300).to_dict()
    spec = ModelSpec.from_config(json.loads(json.dumps(cfg)))
    assert spec.num_hidden_layers == layers and spec.rope.factor == 32.0 and spec.rope.theta == 150000.0
    emitted = spec.to_config()
    assert emitted["rope_theta"] == 150000.0 and emitted["rope_scaling"]["factor"] == 32.0
    assert ModelSpec.from_config(emitted) == spec
    back = GptOssConfig(**{k: v for k, v in emitted.items() if k != "rope_parameters"})
    assert back.layer_types == list(spec.layer_types)


def test_unsupported_architecture_is_named():
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    with pytest.raises(UnsupportedArchitecture, match="unsupported architecture LlamaForCausalLM; "
                                                      "supported: GptOssForCausalLM"):
        ModelSpec.from_config(cfg)


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", 100, "multiple of 32"),
    ("num_key_value_heads", 3, "multiple of num_key_value_heads"),
    ("num_experts_per_tok", 64, "exceeds num_local_experts"),
    ("layer_types", ["sliding_attention"], "has 1 entries"),
    ("layer_types", ["banded"] * 24, "unknown entries"),
])
def test_bad_fields_are_named(field, value, message):
    cfg = release_20b_config()
    cfg[field] = value
    with pytest.raises(CheckpointError, match=message):
        ModelSpec.from_config(cfg)


def test_missing_field_is_named():
    cfg = release_20b_config()
    del cfg["hidden_size"]
    with pytest.raises(CheckpointError, match="missing field 'hidden_size'"):
        ModelSpec.from_config(cfg)


@pytest.mark.parametrize("field, value, expected", [
    ("hidden_size", None, "a positive JSON integer"),
    ("hidden_size", "2880", "a positive JSON integer"),
    ("hidden_size", 2880.5, "a positive JSON integer"),
    ("hidden_size", 2880.0, "a positive JSON integer"),
    ("num_hidden_layers", True, "a positive JSON integer"),
    ("num_attention_heads", "four", "a positive JSON integer"),
    ("sliding_window", -1, "a positive JSON integer"),
    ("head_dim", 0, "a positive JSON integer"),
    ("experts_per_token", 1e400, "a positive JSON integer"),
    ("rms_norm_eps", "x", "a finite JSON number > 0"),
    ("rms_norm_eps", float("nan"), "a finite JSON number > 0"),
    ("rms_norm_eps", True, "a finite JSON number > 0"),
    ("swiglu_limit", "seven", "a finite JSON number > 0"),
    ("swiglu_limit", float("inf"), "a finite JSON number > 0"),
    ("rope_theta", -150000, "a finite JSON number > 0"),
    ("attention_bias", "false", "true or false"),
])
def test_field_types_and_ranges_are_strict(field, value, expected):
    """JSON ints only for integer fields (no string/float/bool), finite numbers for the floats; the
    message names config.json, the field, the value found and what is expected."""
    cfg = release_20b_config()
    cfg[field] = value
    if field == "experts_per_token":  # the alias is read only when num_experts_per_tok is absent
        del cfg["num_experts_per_tok"]
    with pytest.raises(CheckpointError) as info:
        ModelSpec.from_config(json.loads(json.dumps(cfg)), source="ckpt/config.json")
    message = str(info.value)
    assert message.startswith(f"ckpt/config.json: field '{field}' is {json.dumps(value)}; expected {expected}")
    assert "\n" not in message


@pytest.mark.parametrize("where, key, value", [("rope_scaling", "factor", "32"),
                                               ("rope_scaling", "truncate", 0),
                                               ("rope_scaling", "original_max_position_embeddings", 4096.5)])
def test_nested_rope_fields_are_named_in_full(where, key, value):
    cfg = release_20b_config()
    cfg[where] = {**cfg[where], key: value}
    with pytest.raises(CheckpointError, match=f"field '{where}.{key}' is {json.dumps(value)}; expected"):
        ModelSpec.from_config(cfg)


def test_optional_fields_accept_null_as_unset():
    cfg = release_20b_config()
    cfg.update(head_dim=None, sliding_window=None, num_key_value_heads=None, rms_norm_eps=1)
    spec = ModelSpec.from_config(cfg)
    assert (spec.head_dim, spec.sliding_window, spec.num_key_value_heads) == (45, 128, 64)
    assert spec.rms_norm_eps == 1.0 and isinstance(spec.rms_norm_eps, float)


@pytest.mark.parametrize("key, value", [("rope_parameters", [1]), ("rope_parameters", "yarn"),
                                        ("rope_scaling", 32.0)])
def test_rope_objects_must_be_objects(key, value):
    """A non-object rope_parameters was ignored (the legacy rope_scaling read instead): now named and refused."""
    cfg = release_20b_config()
    cfg[key] = value
    with pytest.raises(CheckpointError) as info:
        ModelSpec.from_config(cfg, "ckpt/config.json")
    assert str(info.value) == (f"ckpt/config.json: field {key!r} is {json.dumps(value)}; expected a JSON object "
                               "(YaRN parameters) or null; correct it in config.json")


def test_model_type_must_agree_with_the_architecture():
    """transformers' AutoConfig (and TensorRT-LLM) pick the class by model_type: 'llama' beside
    GptOssForCausalLM would load another model, so it is refused rather than ignored."""
    cfg = release_20b_config()
    cfg["model_type"] = "llama"
    with pytest.raises(UnsupportedArchitecture) as info:
        ModelSpec.from_config(cfg, "ckpt/config.json")
    assert str(info.value).startswith('ckpt/config.json: model_type "llama" contradicts architectures '
                                      'GptOssForCausalLM; gpt-oss configs say model_type "gpt_oss"')
    del cfg["model_type"]
    assert ModelSpec.from_config(cfg).num_hidden_layers == 24  # absent is fine: the architecture says it
