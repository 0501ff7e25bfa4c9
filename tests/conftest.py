"""Shared fixtures: tiny checkpoints made here (nothing is downloaded)."""

from __future__ import annotations

import os

# Triton kernels run on CPU through the interpreter, which is chosen when a kernel is decorated: set it
# before any test module imports plugins (tests that compile for a GPU target do so in a child process).
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

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
