"""YaRN inverse frequencies against transformers' own `ROPE_INIT_FUNCTIONS["yarn"]` (the oracle), bit for bit,
with and without `truncate` and on shapes where the truncated and fractional ramps differ; and a config
that omits `truncate` reads as transformers reads it (True)."""

from __future__ import annotations

import pytest
import torch
from transformers import GptOssConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from builder.spec import ModelSpec
from builder.synth import SHAPES
from plugins.attention.reference import yarn_inv_freq

# (head_dim, theta, factor, original positions): gpt-oss's, then shapes whose ramp bounds are far from integers
GRID = [(64, 150000.0, 32.0, 4096), (128, 10000.0, 8.0, 2048), (64, 500000.0, 16.0, 8192), (32, 150000.0, 4.0, 1024)]


def _oracle(head_dim, theta, factor, original, truncate: bool | None) -> torch.Tensor:
    rope = {"rope_type": "yarn", "rope_theta": theta, "factor": factor, "beta_fast": 32.0, "beta_slow": 1.0,
            "original_max_position_embeddings": original}
    if truncate is not None:
        rope["truncate"] = truncate
    cfg = GptOssConfig(head_dim=head_dim, rope_parameters=rope)
    return ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")[0]


@pytest.mark.parametrize("truncate", [True, False])
@pytest.mark.parametrize("head_dim,theta,factor,original", GRID)
def test_inv_freq_matches_transformers(head_dim, theta, factor, original, truncate):
    ours = yarn_inv_freq(head_dim, theta, factor, original, 32.0, 1.0, truncate=truncate)
    assert torch.equal(ours, _oracle(head_dim, theta, factor, original, truncate))


def test_grid_tells_truncation_apart():
    """The grid can catch a wrong rounding: on most of its shapes truncating changes the frequencies."""
    differ = [not torch.equal(_oracle(*g, True), _oracle(*g, False)) for g in GRID]
    assert sum(differ) >= 3, differ


def test_config_without_truncate_reads_as_transformers_does():
    cfg = SHAPES["gpt-oss-20b"].spec().to_config()
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(cfg.get(key), dict):
            cfg[key].pop("truncate", None)
    spec = ModelSpec.from_config(cfg)
    assert spec.rope.truncate is True
    r = spec.rope
    ours = yarn_inv_freq(64, r.theta, r.factor, r.original_max_position_embeddings, r.beta_fast, r.beta_slow,
                         truncate=r.truncate)
    assert torch.equal(ours, _oracle(64, r.theta, r.factor, r.original_max_position_embeddings, None))
