"""Shared fixtures: tiny checkpoints made here (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.layout import ExpertFormat
from builder.synth import synth


@pytest.fixture(scope="session")
def tiny_mxfp4(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny-mxfp4"
    synth(out, "tiny", seed=1)
    return out


@pytest.fixture(scope="session")
def tiny_bf16(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny-bf16"
    synth(out, "tiny", seed=2, experts_format=ExpertFormat.BF16)
    return out


@pytest.fixture(scope="session")
def tiny_nvfp4(tmp_path_factory, tiny_mxfp4) -> Path:
    from builder.convert import convert

    out = tmp_path_factory.mktemp("ckpt") / "tiny-nvfp4"
    convert(tiny_mxfp4, out)
    return out
