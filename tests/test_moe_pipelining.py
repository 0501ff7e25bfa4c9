"""The MoE GEMM as Triton compiles it for an H100 (sm_90), checked on CPU without a GPU (`bench/moe_static.py`):
for gpt-oss layers stored as `MoeTensors.k_major` stores them, every global load of the K loop (FP4 codes,
block scales, activations) is an asynchronous copy that Triton pipelines `num_stages` deep. A load
Triton cannot vectorize to >= 4 bytes a thread stays a plain load issued and waited for in the same K
step, one memory round trip per step: the block scales were such a load until their rows were aligned
and their K bound tested in whole vectors (BENCHMARKS.md, issue 6).
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from bench import moe_static  # noqa: E402
from plugins.moe import fused  # noqa: E402
from plugins.moe.tensors import ROW_ALIGN  # noqa: E402


@pytest.fixture(scope="module")
def layer():
    return moe_static.nvfp4_layer()


def test_k_major_rows_are_16_byte_aligned(layer):
    for p in (layer.gate_up, layer.down):
        for t in (p.weight, p.scale):  # logical [E, in/x, out]: rows are the output columns
            assert t.stride(1) == 1 and t.stride(2) % ROW_ALIGN == 0 and t.data_ptr() % ROW_ALIGN == 0


@pytest.mark.parametrize("n_tokens,config", [(1, fused.DECODE_CONFIG), (32, fused.DECODE_CONFIG),
                                             (128, fused.DECODE_WIDE_CONFIG)])
def test_every_k_loop_load_is_pipelined(layer, n_tokens, config):
    launches = moe_static.capture(layer, n_tokens, config)
    assert [la["args"]["GATE_UP"][1] for la in launches] == [True, False]
    for la in launches:
        row = moe_static.summarize(la, moe_static.compile_launch(la))
        assert row["sync_loads_in_loop"] == 0 and row["ldg_in_loop"] == 0, row
        assert row["async_copies_in_loop"] >= 3, row  # codes, scales, activations
        assert row["tensor_core_ops"] > 0, row       # wgmma on sm_90


def test_spread_storage_decodes_in_fewer_instructions(layer):
    """`k_major(spread=True)`: the same pipelined loads, and its decode (PTX assembled here by ptxas; two dots
    per K step, no regrouping of decoded values) cuts the K loop by at least 35% against the checkpoint
    order's bf16_scale decode (456 -> 270 instructions with triton 3.9, BENCHMARKS.md), with fewer barriers."""
    rows = {}
    for name, t in (("plain", layer), ("spread", moe_static.nvfp4_layer(spread=True))):
        launch = moe_static.capture(t, 1, fused.DECODE_CONFIG)[0]
        assert launch["args"]["FMT"][1] == (3 if name == "spread" else 2)
        rows[name] = moe_static.summarize(launch, moe_static.compile_launch(launch))
    spread, plain = rows["spread"], rows["plain"]
    assert spread["sync_loads_in_loop"] == 0 and spread["ldg_in_loop"] == 0, spread
    assert spread["async_copies_in_loop"] >= 4, spread   # codes, scales, two activation halves
    assert spread["loop_instructions"] <= 0.65 * plain["loop_instructions"], rows
    assert spread["barriers_in_loop"] < plain["barriers_in_loop"], rows
    # the PTX reads 4 consecutive code bytes of a thread as one stored group (pack=4): its operands must
    # be laid out in runs of a multiple of 4 along K (sizePerThread), the loop's chunk and the tail's alike
    assert spread["asm_run"] is not None and spread["asm_run"] % 4 == 0, spread


@pytest.mark.parametrize("n_tokens", [1, 32])  # the spread defaults: 6 stages for one token, 3 above
def test_spread_defaults_keep_every_load_pipelined(n_tokens):
    import torch

    config = fused.default_config(n_tokens * moe_static.TOP_K, 128, torch.device("cuda"), spread=True)
    assert config.num_stages == (6 if n_tokens == 1 else 3)
    for la in moe_static.capture(moe_static.nvfp4_layer(spread=True), n_tokens, config):
        row = moe_static.summarize(la, moe_static.compile_launch(la))
        assert row["sync_loads_in_loop"] == 0 and row["ldg_in_loop"] == 0, row
        assert row["async_copies_in_loop"] >= 4, row
